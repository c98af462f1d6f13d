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

# onnxruntime's default opset for these ops; MatMulInteger and DynamicQuantizeLinear exist since 10/11.
RANK_OPSET = 13
LABEL_LEVELS = 127  # symmetric: -127..127, stored as uint8 around LABEL_ZERO
# Labels are stored as uint8 with a zero point of 128, so onnxruntime runs its u8 x u8 kernel: its u8 x s8
# kernel on x86 without VNNI (AVX2's vpmaddubsw) adds pairs of products in int16 with saturation, and
# 2 x 255 x 127 overflows it, which broke the error bound (a test saw 0.14 against a bound of 0.018).
# u8 x u8 widens to int16 before multiplying (exact); on the Pi 5 both run on UDOT/SDOT, exact too.
LABEL_ZERO = 128


def write_rank_model(path: Path, rows: np.ndarray) -> dict[str, float]:
    """rows: [labels, dim] normalized embeddings. Returns the figures the runtime's error bound needs."""
    rows = rows.astype(np.float32)
    scales = np.maximum(np.abs(rows).max(axis=1), 1e-12) / LABEL_LEVELS
    quantized = np.clip(np.round(rows / scales[:, None]), -LABEL_LEVELS, LABEL_LEVELS).astype(np.int16)
    labels, dim = rows.shape
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["embedding"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "labels_t", "q_zero", "labels_zero"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["q_scale", "label_scales"], ["scale"]),
        helper.make_node("Mul", ["acc_f", "scale"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "coarse_rank",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, labels])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray((quantized + LABEL_ZERO).astype(np.uint8).T), "labels_t"),
            numpy_helper.from_array(np.array(LABEL_ZERO, np.uint8), "labels_zero"),
            numpy_helper.from_array(scales.astype(np.float32), "label_scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", RANK_OPSET)])
    model.ir_version = 8
    # The int8 rows as external data: onnxruntime maps them instead of holding a protobuf copy while it
    # builds the session (half the peak memory of a 100k-label vocabulary).
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=1024)
    dequantized = quantized.astype(np.float32) * scales[:, None]
    return {
        "max_label_scale": float(scales.max()),
        "max_label_error_l2": float(np.linalg.norm(dequantized - rows, axis=1).max()),
        "max_label_norm": float(np.linalg.norm(dequantized, axis=1).max()),
    }
