"""torch -> ONNX with static shapes and the TorchScript exporter, then graph simplification."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

log = logging.getLogger(__name__)


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    opset: int,
    simplify: bool,
    dynamic_axes: dict[int, str] | None = None,
) -> dict[str, int]:
    """Export (static shapes unless `dynamic_axes` names input axes, e.g. {0: "batch"}); returns node
    counts before and after simplification.

    `dynamo=False` selects the TorchScript exporter: torch 2.13's default (dynamo) emits opset 18+,
    and Pulsar2 prefers 14. Constant folding plus onnxslim removes the shape arithmetic and mask ops.
    """
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on static shapes
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            dynamic_axes={input_name: dynamic_axes, output_name: {0: dynamic_axes.get(0, "batch")}}
            if dynamic_axes
            else None,
        )
    model = onnx.load(str(path))
    before = len(model.graph.node)
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    explicit_pads(model)
    onnx.save(model, str(path))
    after = len(model.graph.node)
    log.info("%s: %d nodes, %d after simplification", path.name, before, after)
    return {"nodes_exported": before, "nodes_final": after}


def explicit_pads(model: onnx.ModelProto) -> None:
    """Convs and pools with `auto_pad='VALID'` (SigLIP's patch embedding exports one) get explicit zero
    `pads` instead: the same computation, and the AX650 operator table accepts only explicit padding."""
    for node in model.graph.node:
        auto_pad = next((a for a in node.attribute if a.name == "auto_pad"), None)
        if auto_pad is None or auto_pad.s in (b"NOTSET", b""):
            continue
        if auto_pad.s != b"VALID":
            raise ValueError(f"{node.name}: auto_pad {auto_pad.s.decode()} has no explicit form here")
        kernel = next((a for a in node.attribute if a.name == "kernel_shape"), None)
        node.attribute.remove(auto_pad)
        node.attribute.append(onnx.helper.make_attribute("pads", [0] * (2 * (len(kernel.ints) if kernel else 2))))
