"""Operator tables of the NPU targets, as data.

AX650: Axera pulsar2-docs, source/appendix/op_support_list_ax650.md ("NPU Operators support list").
Only the attribute limits that an ONNX file can show are encoded; each limit has its reason beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from onnx import TensorProto


def _all_ones(value: object) -> bool:
    return all(v == 1 for v in value)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AttrLimit:
    """One documented attribute limit: `allowed(value)` with ONNX's default when the attribute is absent."""

    ops: frozenset[str]
    attr: str
    default: object
    allowed: Callable[[object], bool]
    doc: str  # the table's words
    when: tuple[str, object, object] | None = None  # (attribute, its default, value): applies only then


@dataclass(frozen=True)
class OpTable:
    target: str
    source: str
    ops: frozenset[str]
    cast_to: frozenset[int]  # allowed Cast `to` element types
    max_gather_index_rank: int  # "Gather: indices currently only supports 1 dimension"
    select_last_index: int  # "ArgMax/ArgMin: select_last_index only supports 0"
    layernorm_axis: int  # "LayerNormalization: axis only supports -1"
    resize_modes: frozenset[str]
    pad_modes: frozenset[str]
    lp_norm_axis: int  # "LpNormalization: axis currently only supports -1"
    attr_limits: tuple[AttrLimit, ...]


AX650 = OpTable(
    target="ax650",
    source="AXERA-TECH/pulsar2-docs-en source/appendix/op_support_list_ax650.md",
    ops=frozenset(
        """Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
        Conv ConvTranspose Cos DepthToSpace Div Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements
        GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
        HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual
        LpNormalization LSTM LogSoftmax MatMul Max MaxPool Min Mish Mul Not Pad Pow PRelu ReduceL2 ReduceMax
        ReduceMean ReduceMin ReduceSum Relu Reshape Resize RMSNormalization RoiAlign RotaryEmbedding Round
        ScatterElements ScatterND Sigmoid Silu Sin Slice Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub
        Swish Tanh Tile TopK Transpose Unsqueeze Where Xor""".split()
    ),
    cast_to=frozenset(
        {
            TensorProto.UINT8,
            TensorProto.INT8,
            TensorProto.UINT16,
            TensorProto.INT16,
            TensorProto.UINT32,
            TensorProto.INT32,
            TensorProto.FLOAT,
        }
    ),
    max_gather_index_rank=1,
    select_last_index=0,
    layernorm_axis=-1,
    resize_modes=frozenset({"nearest", "linear"}),
    pad_modes=frozenset({"constant"}),
    lp_norm_axis=-1,
    attr_limits=(
        AttrLimit(
            frozenset({"AveragePool", "Conv", "ConvTranspose", "MaxPool"}),
            "auto_pad",
            "NOTSET",
            lambda v: v == "NOTSET",
            "auto_pad only supports NOTSET",
        ),
        AttrLimit(
            frozenset({"AveragePool"}), "count_include_pad", 0, lambda v: v == 1, "count_include_pad only supports 1"
        ),
        AttrLimit(frozenset({"MaxPool"}), "dilations", (1,), _all_ones, "dilations only support 1"),
        AttrLimit(frozenset({"ConvTranspose"}), "dilations", (1,), _all_ones, "dilations currently only 1"),
        AttrLimit(frozenset({"MaxPool"}), "storage_order", 0, lambda v: v == 0, "storage_order only 0"),
        AttrLimit(frozenset({"DepthToSpace"}), "mode", "DCR", lambda v: v == "DCR", "mode currently only supports DCR"),
        AttrLimit(frozenset({"LpNormalization"}), "p", 2, lambda v: v in (1, 2), "p only supports 1 or 2"),
        AttrLimit(
            frozenset({"ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum"}),
            "noop_with_empty_axes",
            0,
            lambda v: v == 0,
            "noop_with_empty_axes is not supported yet",
        ),
        AttrLimit(
            frozenset({"Resize"}),
            "nearest_mode",
            "round_prefer_floor",
            lambda v: v == "round_prefer_ceil",
            "nearest_mode only supports round_prefer_ceil",
            when=("mode", "nearest", "nearest"),
        ),
        AttrLimit(
            frozenset({"BatchNormalization"}), "training_mode", 0, lambda v: v == 0, "training_mode is not supported"
        ),
    ),
)

OP_TABLES = {AX650.target: AX650}
