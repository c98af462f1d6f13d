"""A published WD tagger's model.onnx made static, as Pulsar2 takes a graph: its open batch fixed to 1,
shapes inferred, constants folded and the graph simplified (onnxslim), pads explicit; then checked
against the NPU's operator table. The first step of the tagger's way to the NPU (issue 39: the stages
that compile and fetch it build on this), and what the tests hold the three v3 families to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from modeling.graph_checks import check_operators
from modeling.onnx_export import explicit_pads
from modeling.op_tables import OpTable
from pipeline.errors import ModelLoadError
from pipeline.terminal import Check


@dataclass(frozen=True)
class StaticTagger:
    """What the static graph takes and gives, as it was saved (read once, while it is in memory)."""

    input: str
    input_shape: list[int]
    output: str
    output_shape: list[int]
    opset: int
    nodes_published: int
    nodes_static: int


def static_tagger(published: Path, out: Path) -> StaticTagger:
    """`published` (NHWC [batch, size, size, 3] in, [batch, tags] out) with batch 1, simplified, to `out`. A
    file that is not an ONNX model of one input and one output is a ModelLoadError naming it (onnxslim's own
    errors on one would not)."""
    import onnxslim
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(published))
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{published} is not an ONNX model ({exc})") from exc
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        if len(values) != 1:
            names = ", ".join(value.name for value in values)
            raise ModelLoadError(f"{published}: {len(values)} {kind}s ({names}); a WD tagger has one")
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    before = len(model.graph.node)
    model = onnxslim.slim(onnx.shape_inference.infer_shapes(model))
    explicit_pads(model)
    onnx.save(model, str(out))
    (image,), (output,) = model.graph.input, model.graph.output
    return StaticTagger(
        input=image.name,
        input_shape=[d.dim_value for d in image.type.tensor_type.shape.dim],
        output=output.name,
        output_shape=[d.dim_value for d in output.type.tensor_type.shape.dim],
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        nodes_published=before,
        nodes_static=len(model.graph.node),
    )


def tagger_operator_checks(path: Path, table: OpTable) -> list[Check]:
    """One line per operator type of the static graph, failing where the table does not take a node."""
    return check_operators(path.name, onnx.load(str(path)), table)
