"""The coarse ranking model embed-vocab writes beside the label tables: 8-bit labels, one MatMulInteger.

Built here because the device has no `onnx` package; the device runs it with onnxruntime, whose 8-bit
kernels (UDOT on the Pi 5's Cortex-A76, VNNI or widened int16 on x86) read a quarter of the bytes a float32
matrix-vector product reads. The interrogator then rescores, exactly, only the labels the coarse
scores cannot rule out (see runtime/label_tables.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.label_tables import IMAGE_LEVELS

# onnxruntime's default opset for these ops (MatMulInteger exists since 10; ReduceMax takes `axes` as an
# attribute until 18).
RANK_OPSET = 13
LABEL_LEVELS = 127  # symmetric: -127..127, stored as uint8 around LABEL_ZERO
# Labels are stored as uint8 with a zero point of 128, so onnxruntime runs its u8 x u8 kernel: its u8 x s8
# kernel on x86 without VNNI (AVX2's vpmaddubsw) adds pairs of products in int16 with saturation, and
# 2 x 255 x 127 overflows it, which broke the error bound (a test saw 0.14 against a bound of 0.018).
# u8 x u8 widens to int16 before multiplying (exact); on the Pi 5 both run on UDOT/SDOT, exact too.
LABEL_ZERO = 128
# Images come as a batch [images, dim], each quantized alone to IMAGE_LEVELS around the labels' zero point
# (onnxruntime's MatMulInteger takes one zero point for its left operand): several images then read the
# 8-bit labels once, which is what a big category costs (a 100k-label matrix-vector product is bound by
# memory: 5.6 core-ms an image alone, 1.05 in a batch of 8, on this machine's EPYC).


CHUNK_ROWS = 65_536  # labels quantized at a time: the float copies stay a few hundred MB whatever the vocabulary


class RankModelBuilder:
    """The coarse model's 8-bit label matrix filled a chunk of rows at a time (embed-vocab streams a
    vocabulary's categories through it), then written; memory is the 8-bit matrix and one chunk."""

    def __init__(self, labels: int, dim: int) -> None:
        self.labels_t = np.empty((dim, labels), dtype=np.uint8)  # transposed: the MatMulInteger operand
        self.scales = np.empty(labels, dtype=np.float32)
        self.filled = 0
        self.figures = {"max_label_scale": 0.0, "max_label_error_l2": 0.0, "max_label_norm": 0.0}

    def add(self, rows: np.ndarray) -> None:
        """The next normalized rows (any float dtype), in chunks of CHUNK_ROWS."""
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = np.asarray(rows[start : start + CHUNK_ROWS], dtype=np.float32)
            scales = np.maximum(np.abs(chunk).max(axis=1), 1e-12) / LABEL_LEVELS
            quantized = np.clip(np.round(chunk / scales[:, None]), -LABEL_LEVELS, LABEL_LEVELS)
            end = self.filled + len(chunk)
            self.labels_t[:, self.filled : end] = (quantized + LABEL_ZERO).astype(np.uint8).T
            self.scales[self.filled : end] = scales
            self.filled = end
            dequantized = quantized * scales[:, None]
            self._keep_max("max_label_scale", scales.max())
            self._keep_max("max_label_error_l2", np.linalg.norm(dequantized - chunk, axis=1).max())
            self._keep_max("max_label_norm", np.linalg.norm(dequantized, axis=1).max())

    def _keep_max(self, name: str, value: float) -> None:
        self.figures[name] = max(self.figures[name], float(value))

    def write(self, path: Path) -> dict[str, float | bool]:
        """The model file (its 8-bit rows as external data); the figures the runtime's error bound needs."""
        dim, labels = self.labels_t.shape
        if self.filled != labels:
            raise ValueError(f"the rank model got {self.filled} of {labels} labels")
        nodes = [
            helper.make_node("Abs", ["embedding"], ["magnitude"]),
            helper.make_node("ReduceMax", ["magnitude"], ["peak"], axes=[1], keepdims=1),
            helper.make_node("Max", ["peak", "tiny"], ["peak_safe"]),
            helper.make_node("Div", ["peak_safe", "image_levels"], ["q_scale"]),
            helper.make_node("Div", ["embedding", "q_scale"], ["scaled"]),
            helper.make_node("Round", ["scaled"], ["rounded"]),
            helper.make_node("Clip", ["rounded", "low", "image_levels"], ["clipped"]),
            helper.make_node("Add", ["clipped", "zero_f"], ["shifted"]),
            helper.make_node("Cast", ["shifted"], ["q"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", ["q", "labels_t", "labels_zero", "labels_zero"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["acc_f", "q_scale"], ["per_image"]),
            helper.make_node("Mul", ["per_image", "label_scales"], ["scores"]),
        ]
        graph = helper.make_graph(
            nodes,
            "coarse_rank",
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["images", dim])],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["images", labels])],
            initializer=[
                numpy_helper.from_array(self.labels_t, "labels_t"),
                numpy_helper.from_array(np.array(LABEL_ZERO, np.uint8), "labels_zero"),
                numpy_helper.from_array(self.scales, "label_scales"),
                numpy_helper.from_array(np.array(1e-12, np.float32), "tiny"),
                numpy_helper.from_array(np.array(IMAGE_LEVELS, np.float32), "image_levels"),
                numpy_helper.from_array(np.array(-IMAGE_LEVELS, np.float32), "low"),
                numpy_helper.from_array(np.array(LABEL_ZERO, np.float32), "zero_f"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", RANK_OPSET)])
        model.ir_version = 8
        # The int8 rows as external data: onnxruntime maps them instead of holding a protobuf copy while it
        # builds the session (half the peak memory of a 100k-label vocabulary).
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=1024)
        return {**self.figures, "batched": True}


def write_rank_model(path: Path, rows: np.ndarray) -> dict[str, float | bool]:
    """rows: [labels, dim] normalized embeddings. Returns the figures the runtime's error bound needs."""
    builder = RankModelBuilder(*rows.shape)
    builder.add(rows)
    return builder.write(path)
