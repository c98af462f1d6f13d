"""tagger-compile: quantize and compile the static tagger graph as compile does the CLIP encoders, with
compile's settings and build host (`stages.compile`; `invoke tagger-compile --host mac`): Pulsar2 in Docker
on the build host, or onnxruntime QDQ here measured on tagger-verify's golden photos."""

from __future__ import annotations

from pathlib import Path

from pipeline.stage import StageContext
from runtime.golden import GOLDEN_DIR
from runtime.tagger import TaggerInfo
from stages.compile import CompileStage, CompileStageParams
from stages.tagger_export import MODEL_FILE
from toolchains.calibration_tar import CalibrationSet
from toolchains.encoder_specs import EncoderSpec

TAGGER = "tagger"  # the compiled model's stem: tagger.axmodel (or tagger.onnx), model.* on the device


class TaggerCompileStage(CompileStage):
    name = "tagger-compile"
    help = "Quantize and compile the WD tagger as compile does the encoders (its settings, its build host)."
    settings = None
    settings_of = "compile"
    after = ("tagger-export", "tagger-verify", "tagger-calibrate")

    def specs(self, ctx: StageContext[CompileStageParams]) -> list[EncoderSpec]:
        export_dir, calibrate_dir = ctx.upstream("tagger-export"), ctx.upstream("tagger-calibrate")
        info = TaggerInfo.read(export_dir)
        archive = CalibrationSet.read(calibrate_dir).archive(info.input)
        return [
            EncoderSpec(
                name=TAGGER,
                onnx=export_dir / MODEL_FILE,
                input_name=info.input,
                input_dtype="float32",
                output_name=info.output,
                calibration=calibrate_dir / archive.file,
                layout="NHWC",
                source_dtype="U8",
            )
        ]

    def golden_dir(self, ctx: StageContext[CompileStageParams]) -> Path:
        return ctx.upstream("tagger-verify") / GOLDEN_DIR
