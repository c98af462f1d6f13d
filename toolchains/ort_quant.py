"""The onnxruntime target: static QDQ quantization from the same calibration sets Pulsar2 reads.

It runs anywhere, so the whole pipeline runs without Axera hardware, and its quantized-vs-float cosine
previews the quantization error of the chosen activation precision (U16 or U8) before a Pulsar2 build.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.errors import StageError
from toolchains.calibration_tar import read_npy_tar
from toolchains.compile_params import CompileParams
from toolchains.encoder_specs import EncoderSpec

# Pulsar2 calibration method -> onnxruntime's; MSE has no onnxruntime counterpart.
_METHODS = {"MinMax": "MinMax", "Percentile": "Percentile"}
_ACTIVATIONS = {"U16": "QUInt16", "U8": "QUInt8"}
# Attention masks add a constant near float32's minimum; quantized, it flattens every attention score.
_MASK_MAGNITUDE = 1e4


class _Samples:
    """onnxruntime's CalibrationDataReader protocol over the calibration archive."""

    def __init__(self, input_name: str, samples: list[np.ndarray]) -> None:
        self._feeds = iter([{input_name: sample} for sample in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(spec: EncoderSpec, params: CompileParams, output: Path) -> int:
    """Write the QDQ model; returns how many calibration samples were used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if params.calibration_method not in _METHODS:
        raise StageError(
            "compile",
            f"calibration_method {params.calibration_method} exists only in Pulsar2",
            hint=f"for the onnxruntime target use one of {', '.join(_METHODS)}",
        )
    samples = read_npy_tar(spec.calibration)[: params.calibration_size]
    with _quiet_root_logger():
        quantize_static(
            str(spec.onnx),
            str(output),
            calibration_data_reader=_Samples(spec.input_name, samples),
            quant_format=QuantFormat.QDQ,
            activation_type=getattr(QuantType, _ACTIVATIONS[params.data_type]),
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=getattr(CalibrationMethod, _METHODS[params.calibration_method]),
            # Float math only: token ids and the EOS position stay exact integers. Softmax inputs carry the
            # attention mask's huge negatives, so they stay float too (its outputs are quantized downstream).
            op_types_to_quantize=["MatMul", "Gemm", "Conv", "Add", "Mul", "Sigmoid"],
            nodes_to_exclude=_mask_adds(spec.onnx),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return len(samples)


def _mask_adds(path: Path) -> list[str]:
    """Add nodes whose constant operand is an attention mask (huge negative values): kept in float."""
    model = onnx.load(str(path), load_external_data=False)
    constants = {init.name for init in model.graph.initializer if _is_mask(numpy_helper.to_array(init))}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and _is_mask(numpy_helper.to_array(node.attribute[0].t)):
            constants.add(node.output[0])
    return [node.name for node in model.graph.node if node.op_type == "Add" and set(node.input) & constants]


def _is_mask(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and array.size > 0 and float(np.abs(array).max()) > _MASK_MAGNITUDE


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger; the stage report says what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
