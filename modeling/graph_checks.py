"""Static checks of an exported ONNX file: validity, opset, input/output contract, and the NPU op table.

Each check is a line (name, pass/fail, detail), so verify can report all of them before failing once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from modeling.op_tables import OpTable
from pipeline.terminal import Check


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} {TensorProto.DataType.Name(self.elem_type).lower()} {list(self.shape)}"


def check_model_file(
    path: Path, *, opset: int, inputs: list[TensorSpec], outputs: list[TensorSpec], table: OpTable
) -> list[Check]:
    label = path.name
    try:
        onnx.checker.check_model(str(path), full_check=True)
        checks = [Check(f"{label}: onnx.checker", True, "valid")]
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [Check(f"{label}: onnx.checker", False, str(exc).splitlines()[0])]
    model = onnx.load(str(path))
    found_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    checks.append(Check(f"{label}: opset", found_opset == opset, f"opset {found_opset}, expected {opset}"))
    checks += _check_io(label, "input", list(model.graph.input), inputs)
    checks += _check_io(label, "output", list(model.graph.output), outputs)
    checks += check_operators(label, model, table)
    return checks


def _spec_of(value: onnx.ValueInfoProto) -> tuple[int, tuple[int | str, ...]]:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return tensor.elem_type, dims


def _check_io(label: str, kind: str, values: list[onnx.ValueInfoProto], expected: list[TensorSpec]) -> list[Check]:
    checks = []
    by_name = {v.name: v for v in values}
    extra = sorted(set(by_name) - {spec.name for spec in expected})
    if extra:
        checks.append(Check(f"{label}: {kind}s", False, f"unexpected {kind}s {extra}"))
    for spec in expected:
        name = f"{label}: {kind} {spec.name}"
        if spec.name not in by_name:
            checks.append(Check(name, False, f"missing; expected {spec.describe()}"))
            continue
        elem_type, dims = _spec_of(by_name[spec.name])
        symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
        found = f"{TensorProto.DataType.Name(elem_type).lower()} {list(dims)}"
        if symbolic:
            checks.append(Check(name, False, f"symbolic dims {symbolic} in {found}; export with static shapes"))
        else:
            ok = elem_type == spec.elem_type and tuple(dims) == spec.shape
            checks.append(Check(name, ok, found if ok else f"{found}, expected {spec.describe()}"))
    return checks


def check_operators(label: str, model: onnx.ModelProto, table: OpTable) -> list[Check]:
    """One line per operator type: count and, where it fails, which nodes break which limit."""
    inferred = shape_inference.infer_shapes(model)
    ranks = _known_ranks(inferred)
    initializers = {i.name: numpy_helper.to_array(i) for i in inferred.graph.initializer}
    counts: dict[str, int] = defaultdict(int)
    problems: dict[str, list[str]] = defaultdict(list)
    for node in inferred.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[op] += 1
        problem = _node_problem(node, op, table, ranks, initializers)
        if problem:
            problems[op].append(f"{node.name or op}: {problem}")
    checks = []
    for op in sorted(counts):
        name = f"{label}: op {op} x{counts[op]}"
        if problems[op]:
            shown = "; ".join(problems[op][:3]) + (f" (+{len(problems[op]) - 3} more)" if len(problems[op]) > 3 else "")
            checks.append(Check(name, False, shown))
        else:
            checks.append(Check(name, True, f"supported on {table.target}"))
    return checks


def _node_problem(
    node: onnx.NodeProto, op: str, table: OpTable, ranks: dict[str, int], initializers: dict[str, np.ndarray]
) -> str:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op not in table.ops:
        return f"not in the {table.target} operator table"
    if op == "Cast" and attrs.get("to") not in table.cast_to:
        return f"Cast to {TensorProto.DataType.Name(attrs.get('to', 0))} is not supported"
    if op == "Gather" and ranks.get(node.input[1], 0) > table.max_gather_index_rank:
        return f"indices have rank {ranks[node.input[1]]}, the NPU takes at most {table.max_gather_index_rank}"
    if op in ("ArgMax", "ArgMin") and attrs.get("select_last_index", 0) != table.select_last_index:
        return f"select_last_index={attrs['select_last_index']}, only {table.select_last_index} is supported"
    if op == "Pow":
        exponent = initializers.get(node.input[1])
        if exponent is None or exponent.size != 1:
            return "exponent must be a scalar initializer (a Constant node or a computed tensor is not)"
    for axis_op, last in (("LayerNormalization", table.layernorm_axis), ("LpNormalization", table.lp_norm_axis)):
        if op == axis_op and attrs.get("axis", -1) not in (last, ranks.get(node.input[0], 0) - 1):
            return f"axis={attrs['axis']}, only the last axis is supported"
    if op == "Pad" and len(node.input) > 3 and node.input[3]:
        return "axes is not supported yet"
    for limit in table.attr_limits:
        if op not in limit.ops or (limit.when and _value(attrs.get(limit.when[0], limit.when[1])) != limit.when[2]):
            continue
        value = _value(attrs.get(limit.attr, limit.default))
        if not limit.allowed(value):
            return f"{limit.attr}={value!r}: {limit.doc}"
    if op == "Gemm" and (attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
        return "alpha/beta other than 1 are not supported"
    if op == "Resize" and _value(attrs.get("mode", b"nearest")) not in table.resize_modes:
        return f"mode {_value(attrs['mode'])!r} is not supported"
    if op == "Pad" and _value(attrs.get("mode", b"constant")) not in table.pad_modes:
        return f"mode {_value(attrs['mode'])!r} is not supported"
    return ""


def _value(value: object) -> object:
    """An attribute value in a comparable form: bytes as text, lists as tuples."""
    if isinstance(value, bytes):
        return value.decode()
    return tuple(value) if isinstance(value, list) else value


def _known_ranks(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks
