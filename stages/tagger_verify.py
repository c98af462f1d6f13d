"""tagger-verify: the static tagger graph is valid, fits the NPU's operator table, and gives the published
model's probabilities on real photos (onnxruntime, both graphs). The photos' pixels and the published
model's probabilities are saved as the golden set compile and the device's smoke test measure against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.contract import JsonFile
from modeling.tagger_config import TaggerSource
from pipeline.errors import ValidationFailed
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import Check, print_checks
from runtime.golden import GOLDEN_DIR, GoldenSet, Reference
from runtime.preprocess import find_images, open_image
from runtime.similarity import cosine
from runtime.tagger import TaggerInfo, prepare_image
from stages.tagger_export import MODEL_FILE, tagger_of
from stages.verify import Agreement, GraphCheckParams, Sample, golden_images, terminal_view

if TYPE_CHECKING:
    from stages.config import PipelineConfig


@dataclass(frozen=True)
class TaggerVerification(JsonFile, file="verification.json", made_by="invoke tagger-verify"):
    tagger: str
    target: str
    passed: bool
    checks: tuple[Check, ...]
    static_vs_published: Agreement


class TaggerVerifyParams(GraphCheckParams):
    """verify's settings that a graph check reads (target, photos, bar), and the tagger whose published graph
    is the reference: a new prompt or cosine bar for the CLIP encoders does not rerun it."""

    tagger: TaggerSource


class TaggerVerifyStage(Stage):
    name = "tagger-verify"
    help = "Check the static tagger graph (NPU op table) and compare it with the published one on real photos."
    tools = ("onnx", "onnxruntime", "pillow", "numpy")
    after = ("tagger-export",)
    outputs = (TaggerVerification.FILE, f"{GOLDEN_DIR}/{GoldenSet.FILE}")

    def params(self, config: PipelineConfig) -> TaggerVerifyParams:
        verify = config.stages.verify.model_dump(include=set(GraphCheckParams.model_fields))
        return TaggerVerifyParams(tagger=tagger_of(config).source, **verify)

    def external_inputs(self, params: TaggerVerifyParams) -> list[Path]:
        return find_images(params.images)

    def run(self, ctx: StageContext[TaggerVerifyParams]) -> StageResult:
        from onnx import TensorProto

        from modeling.graph_checks import TensorSpec, check_model_file
        from modeling.op_tables import OP_TABLES
        from modeling.tagger_source import published_tagger

        params, export_dir = ctx.params, ctx.upstream("tagger-export")
        info = TaggerInfo.read(export_dir)
        checks = check_model_file(
            export_dir / MODEL_FILE,
            opset=info.opset,
            inputs=[TensorSpec(info.input, TensorProto.FLOAT, (1, info.size, info.size, 3))],
            outputs=[TensorSpec(info.output, TensorProto.FLOAT, (1, info.tags))],
            table=OP_TABLES[params.target],
        )
        photos = golden_images(params.images, params.max_images)
        pixels = np.concatenate([prepare_image(open_image(path), info.size) for path in photos]).astype(np.float32)
        published = _probabilities(published_tagger(params.tagger, ctx.cache_dir).model, pixels)
        static = _probabilities(export_dir / MODEL_FILE, pixels)
        samples = tuple(
            Sample(path.name, cosine(a, b), float(np.abs(a - b).max()))
            for path, a, b in zip(photos, static, published, strict=True)
        )
        worst = max(s.max_abs_diff or 0.0 for s in samples)
        checks.append(
            Check(
                "probabilities: static vs published (onnxruntime)",
                worst <= params.max_abs_diff,
                f"max abs diff {worst:.2e} over {len(samples)} photos (need <= {params.max_abs_diff:g})",
            )
        )
        golden = ctx.out_dir / GOLDEN_DIR
        golden.mkdir()
        GoldenSet.write_arrays(golden, {info.input: pixels, info.output: published})
        GoldenSet({info.output: Reference(MODEL_FILE, info.input, tuple(p.name for p in photos))}).write(golden)
        failures = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
        agreement = Agreement(samples, min_cosine=min(s.cosine for s in samples), max_abs_diff=worst)
        report = TaggerVerification(info.name, params.target, not failures, tuple(checks), agreement)
        report.write(ctx.out_dir)
        report.write_to(ctx.report_file)
        print_checks(f"tagger-verify ({params.target})", terminal_view(checks, params.target))
        if failures:
            raise ValidationFailed(self.name, failures, str(ctx.report_file))
        return StageResult(
            summary=f"{len(checks)} checks passed; static vs published max abs diff {worst:.1e}",
            figures={"max_abs_diff": worst, "photos": len(photos)},
        )


def _probabilities(model: Path, pixels: np.ndarray) -> np.ndarray:
    """Each row's probabilities, one image a run (the static graph takes batch 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in pixels]).astype(np.float32)
