"""tagger-export: a WD tagger's published model.onnx made static for Pulsar2 (batch 1, simplified, pads
explicit: modeling/tagger_graph.py), beside its selected_tags.csv and tagger.json (what later stages and the
device read). The published graph already takes what the device feeds (BGR 0-255 NHWC) and gives
probabilities; its channel order, scale and layout stay in the graph, where Pulsar2 compiles them.

Runs only when pipeline.yaml has a `tagger:` section (stages/__init__.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from common.hashing import sha256_file
from modeling.tagger_config import TaggerConfig, TaggerSource
from pipeline.errors import PipelineError, StageError
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import progress_steps
from runtime.tagger import TAGS_FILE, TaggerInfo, TagList

if TYPE_CHECKING:
    from stages.config import PipelineConfig

MODEL_FILE = "model.onnx"


class TaggerExportStage(Stage):
    name = "tagger-export"
    help = "Make the WD tagger's published model.onnx static for Pulsar2 (batch 1, simplified), with its tag list."
    tools = ("onnx", "onnxslim")
    outputs = (MODEL_FILE, TAGS_FILE, TaggerInfo.FILE)

    def params(self, config: PipelineConfig) -> TaggerSource:
        return tagger_of(config).source

    def external_inputs(self, params: TaggerSource) -> list[Path]:
        if not params.is_local_dir:
            return []
        return [Path(params.id) / name for name in (MODEL_FILE, TAGS_FILE)]

    def run(self, ctx: StageContext[TaggerSource]) -> StageResult:
        from modeling.tagger_graph import static_tagger
        from modeling.tagger_source import published_tagger

        params = ctx.params
        with progress_steps(self.name) as step:
            step(f"reading {params.id}")
            published = published_tagger(params, ctx.cache_dir)
            tags = TagList.read(published.tags)
            step("making the graph static (batch 1) and simplifying it")
            graph = static_tagger(published.model, ctx.out_dir / MODEL_FILE)
        shape, width = graph.input_shape, graph.output_shape[-1:]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 1:
            raise StageError(
                self.name,
                f"{published.model}: the input is {shape}, not a WD tagger's NHWC [batch, size, size, 3]",
                hint="tagger.id must name a WD tagger (model.onnx with one image input, one probability per tag)",
            )
        if width != [len(tags.names)]:
            raise StageError(
                self.name,
                f"{published.model} gives {width[0] if width else '?'} outputs but {published.tags} names "
                f"{len(tags.names)} tags: the two files are not of one tagger",
            )
        shutil.copyfile(published.tags, ctx.out_dir / TAGS_FILE)
        TaggerInfo(
            name=str(params.name),
            source=params.id,
            revision=params.revision,
            published_sha256=sha256_file(published.model),
            opset=graph.opset,
            size=shape[1],
            tags=len(tags.names),
            input=graph.input,
            output=graph.output,
        ).write(ctx.out_dir)
        return StageResult(
            summary=f"{params.name}: [1,{shape[1]},{shape[1]},3] -> [1,{len(tags.names)}] tags, opset {graph.opset}, "
            f"{graph.nodes_published} -> {graph.nodes_static} nodes",
            figures={
                "nodes_published": graph.nodes_published,
                "nodes_static": graph.nodes_static,
                "size": shape[1],
                "tags": len(tags.names),
            },
        )


def tagger_of(config: PipelineConfig) -> TaggerConfig:
    """The config's `tagger:` (the tagger stages are in the graph only when it is set)."""
    if config.tagger is None:
        raise PipelineError("pipeline.yaml has no `tagger:` section", hint="add `tagger: {id: ...}` (README)")
    return config.tagger
