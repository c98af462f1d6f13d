"""The AX650 operator checks, on small hand-built ONNX graphs that break one documented limit each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modeling.graph_checks import TensorSpec, check_model_file, check_operators
from modeling.op_tables import AX650

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def _model(nodes: list[onnx.NodeProto], inputs=(X,), outputs=(Y,), initializers=(), opset: int = 14) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _failures(model: onnx.ModelProto) -> dict[str, str]:
    return {c.name.split(": op ")[1]: c.detail for c in check_operators("m.onnx", model, AX650) if not c.passed}


def test_supported_graph_passes() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    assert _failures(model) == {}


def test_cast_to_int64_is_flagged() -> None:
    y64 = helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)], outputs=(y64,))
    assert _failures(model) == {"Cast x1": "Cast: Cast to INT64 is not supported"}


def test_gather_with_2d_indices_is_flagged_and_1d_passes() -> None:
    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    ids2 = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])
    model = _model([helper.make_node("Gather", ["table", "ids"], ["y"])], (ids2,), (out,), (table,))
    assert "indices have rank 2" in _failures(model)["Gather x1"]
    ids1 = helper.make_tensor_value_info("ids", TensorProto.INT64, [3])
    out1 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    assert _failures(_model([helper.make_node("Gather", ["table", "ids"], ["y"])], (ids1,), (out1,), (table,))) == {}


def test_argmax_select_last_index_is_flagged() -> None:
    out = helper.make_tensor_value_info("y", TensorProto.INT64, [1])
    model = _model([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0, select_last_index=1)], outputs=(out,))
    assert "select_last_index=1" in _failures(model)["ArgMax x1"]


def test_pow_needs_a_scalar_initializer_exponent() -> None:
    exponent = helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])
    model = _model([helper.make_node("Pow", ["x", "e"], ["y"])], inputs=(X, exponent))
    assert _failures(model)["Pow x1"].startswith("Pow: exponent must be a scalar initializer")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    assert _failures(_model([helper.make_node("Pow", ["x", "two"], ["y"])], initializers=(two,))) == {}
    constant = helper.make_node("Constant", [], ["c"], value=two)
    from_node = _model([constant, helper.make_node("Pow", ["x", "c"], ["y"])])
    assert "a Constant node" in _failures(from_node)["Pow x1"]


IMAGE = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])


def _image_model(node: onnx.NodeProto, out_shape: list[int], *initializers: onnx.TensorProto) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    return _model([node], inputs=(IMAGE,), outputs=(out,), initializers=initializers)


SCALES = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
AXES = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
PADS = numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads")


@pytest.mark.parametrize(
    ("model", "op", "fragment"),
    [
        (
            _image_model(helper.make_node("Resize", ["x", "", "scales"], ["y"]), [1, 4, 8, 8], SCALES),
            "Resize",
            "nearest_mode='round_prefer_floor'",
        ),
        (
            _image_model(helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"), [1, 1, 8, 8]),
            "DepthToSpace",
            "mode currently only supports DCR",
        ),
        (
            _image_model(helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2]), [1, 4, 3, 3]),
            "AveragePool",
            "count_include_pad only supports 1",
        ),
        (
            _image_model(
                helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]), [1, 4, 2, 2]
            ),
            "MaxPool",
            "dilations only support 1",
        ),
        (
            _image_model(helper.make_node("LpNormalization", ["x"], ["y"], axis=1), [1, 4, 4, 4]),
            "LpNormalization",
            "only the last axis",
        ),
        (
            _image_model(helper.make_node("LpNormalization", ["x"], ["y"], p=3), [1, 4, 4, 4]),
            "LpNormalization",
            "p only supports 1 or 2",
        ),
        (
            _image_model(helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"]), [1, 4, 6, 6], PADS, AXES),
            "Pad",
            "axes is not supported yet",
        ),
        (
            _image_model(helper.make_node("ReduceMean", ["x"], ["y"], noop_with_empty_axes=1), [1, 4, 4, 4]),
            "ReduceMean",
            "noop_with_empty_axes is not supported yet",
        ),
    ],
)
def test_documented_attribute_limits_are_flagged(model: onnx.ModelProto, op: str, fragment: str) -> None:
    failures = _failures(model)
    assert list(failures) == [f"{op} x1"] and fragment in failures[f"{op} x1"]


def test_attributes_within_the_limits_pass() -> None:
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], nearest_mode="round_prefer_ceil")
    assert _failures(_image_model(resize, [1, 4, 8, 8], SCALES)) == {}
    linear = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    assert _failures(_image_model(linear, [1, 4, 8, 8], SCALES)) == {}
    pool = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], count_include_pad=1)
    assert _failures(_image_model(pool, [1, 4, 3, 3])) == {}
    assert _failures(_image_model(helper.make_node("LpNormalization", ["x"], ["y"]), [1, 4, 4, 4])) == {}


def test_operator_missing_from_the_table_is_flagged() -> None:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    square = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    model = _model([helper.make_node("Trilu", ["x"], ["y"])], inputs=(square,), outputs=(out,))
    assert _failures(model) == {"Trilu x1": "Trilu: not in the ax650 operator table"}


def test_gemm_with_alpha_is_flagged() -> None:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    model = _model([helper.make_node("Gemm", ["x", "w"], ["y"], alpha=0.5)], initializers=(w,))
    assert "alpha/beta" in _failures(model)["Gemm x1"]


def _save(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _file_failures(path: Path, expected_input: TensorSpec, expected_output: TensorSpec) -> dict[str, str]:
    """check_model_file at opset 14 against one input and one output: failed check -> detail."""
    checks = check_model_file(path, opset=14, inputs=[expected_input], outputs=[expected_output], table=AX650)
    return {c.name: c.detail for c in checks if not c.passed}


def test_file_checks_catch_opset_and_symbolic_dims(tmp_path: Path) -> None:
    dynamic = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    path = _save(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=(dynamic,), opset=13), tmp_path)
    failed = _file_failures(
        path, TensorSpec("x", TensorProto.FLOAT, (1, 4)), TensorSpec("y", TensorProto.FLOAT, (1, 4))
    )
    assert failed == {
        "m.onnx: opset": "opset 13, expected 14",
        "m.onnx: input x": "symbolic dims ['batch'] in float ['batch', 4]; export with static shapes",
    }


def test_file_checks_catch_wrong_names_and_dtypes(tmp_path: Path) -> None:
    path = _save(_model([helper.make_node("Relu", ["x"], ["y"])]), tmp_path)
    failed = _file_failures(
        path, TensorSpec("pixel_values", TensorProto.FLOAT, (1, 4)), TensorSpec("y", TensorProto.INT64, (1, 4))
    )
    assert failed["m.onnx: inputs"] == "unexpected inputs ['x']"
    assert failed["m.onnx: input pixel_values"].startswith("missing")
    assert failed["m.onnx: output y"] == "float [1, 4], expected y int64 [1, 4]"


@pytest.mark.parametrize("garbage", [b"", b"not an onnx file"])
def test_invalid_file_fails_the_checker(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(garbage)
    checks = check_model_file(path, opset=14, inputs=[], outputs=[], table=AX650)
    assert [c.passed for c in checks] == [False]
