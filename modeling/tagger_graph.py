"""A published WD tagger's model.onnx made static, as Pulsar2 takes a graph: its open batch fixed to 1,
shapes inferred, constants folded and the graph simplified (onnxslim), pads explicit; then checked
against the NPU's operator table. The first step of the tagger's way to the NPU (issue 39: the stages
that compile and fetch it build on this), and what the tests hold the three v3 families to.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from modeling.graph_checks import check_operators
from modeling.onnx_export import explicit_pads
from modeling.op_tables import OpTable
from pipeline.terminal import Check


def static_tagger(published: Path, out: Path) -> dict[str, int]:
    """`published` (NHWC [batch, size, size, 3] in, [batch, tags] out) with batch 1, simplified, to `out`;
    returns node counts before and after."""
    import onnxslim

    model = onnx.load(str(published))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    before = len(model.graph.node)
    model = onnxslim.slim(onnx.shape_inference.infer_shapes(model))
    explicit_pads(model)
    onnx.save(model, str(out))
    return {"nodes_published": before, "nodes_static": len(model.graph.node)}


def tagger_operator_checks(path: Path, table: OpTable) -> list[Check]:
    """One line per operator type of the static graph, failing where the table does not take a node."""
    return check_operators(path.name, onnx.load(str(path)), table)
