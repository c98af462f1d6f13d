"""Operator tables of the NPU targets, as data.

AX650: Axera pulsar2-docs, source/appendix/op_support_list_ax650.md ("NPU Operators support list").
Only the attribute limits that an ONNX file can show are encoded; each limit has its reason beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto


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
)

OP_TABLES = {AX650.target: AX650}
