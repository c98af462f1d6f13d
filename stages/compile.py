"""compile: quantize and compile both encoders for the NPU.

Target `pulsar2`: generate the Pulsar2 JSON configs, upload the float models and calibration archives to
the build host, run `pulsar2 build` there in Docker, download the .axmodel files, logs and precision
tables. Target `onnxruntime`: static QDQ quantization here, from the same calibration archives, with the
quantized-vs-float cosine on verify's golden inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from common.errors import ModelFilesError
from pipeline.errors import PipelineError, ValidationFailed
from pipeline.hosts import connect
from pipeline.hosts.remote_lock import exclusive
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import console, print_table
from runtime import model_io
from runtime.golden import GOLDEN_DIR, GoldenSet
from runtime.similarity import cosine
from toolchains.compile_params import CompileParams
from toolchains.docker_engine import BuildHostConfig
from toolchains.encoder_specs import EncoderSpec, encoder_specs
from toolchains.precision_table import describe_layers

if TYPE_CHECKING:
    from stages.config import PipelineConfig
    from toolchains.pulsar2_build import BuildResult

log = logging.getLogger(__name__)


class CompileStageParams(CompileParams):
    """compile's settings and the build host. Where it builds is not part of the identity (left out of the
    digest): the same inputs and toolchain give the same model on any build host."""

    host: str = Field("local", exclude=True)
    build_host: BuildHostConfig = Field(exclude=True)


class CompileStage(Stage):
    name = "compile"
    help = "Quantize and compile both encoders: Pulsar2 on the build host (--host), or onnxruntime QDQ here."
    tools = ("onnx", "onnxruntime", "numpy")
    settings = CompileParams
    after = ("export", "verify", "calibrate")
    outputs = (model_io.CompileReport.FILE,)

    def host_name(self, config: PipelineConfig) -> str:
        return config.stages.compile.host

    def params(self, config: PipelineConfig) -> CompileStageParams:
        settings = config.stages.compile
        return CompileStageParams(**dict(settings), build_host=config.host(settings.host))

    def remote_changes(self, params: CompileStageParams, artifacts: Path) -> list[str]:
        """The Pulsar2 image that built the models is still the one its tag names on the build host (a
        re-tagged `pulsar2:5.1` is another toolchain). An unreachable build host is not a reason to
        rebuild: the check is skipped, with a warning."""
        if params.target != "pulsar2":
            return []
        from toolchains.docker_engine import open_engine
        from toolchains.pulsar2_build import image_id

        try:
            built_by = model_io.CompileReport.read(artifacts / self.name).toolchain
        except ModelFilesError as exc:
            return [str(exc)]
        # One quick try: a build host that sleeps must not hold up `invoke status` or a no-op run.
        quick = params.build_host.model_copy(update={"retries": 0, "connect_timeout": QUICK_CONNECT_S})
        try:
            with connect(params.host, quick) as transport, open_engine(transport, quick) as engine:
                current = image_id(engine, params.pulsar2.image)
        except PipelineError as exc:
            log.warning("compile: the Pulsar2 image on %s was not checked (%s)", params.host, exc.message)
            return []
        image = f"image {params.pulsar2.image} on {params.host}"
        if current is None:
            return [f"{image} is gone"]
        if built_by is None or built_by.image_id != current:
            was = built_by.image_id[:19] if built_by else "not recorded"
            return [f"{image} is now {current[:19]} (the models were built by {was})"]
        return []

    def specs(self, ctx: StageContext[CompileStageParams]) -> list[EncoderSpec]:
        """The models this stage compiles, from its upstream stages' outputs."""
        return encoder_specs(ctx.upstream("export"), ctx.upstream("calibrate"))

    def golden_dir(self, ctx: StageContext[CompileStageParams]) -> Path:
        """verify's golden inputs and float outputs, which the onnxruntime target measures against."""
        return ctx.upstream("verify") / GOLDEN_DIR

    def run(self, ctx: StageContext[CompileStageParams]) -> StageResult:
        params = ctx.params
        specs = self.specs(ctx)
        transfers, toolchain = None, None
        if params.target == "onnxruntime":
            models = _compile_onnxruntime(ctx, specs, self.golden_dir(ctx))
        else:
            models, transfers, toolchain = _compile_pulsar2(ctx, specs)
        report = model_io.CompileReport(params.target, params.data_type, params.host, models, transfers, toolchain)
        report.write(ctx.out_dir)
        report.write_to(ctx.report_file)
        rows = [(name, m.file, _cosine_text(m.cosine), m.sha256[:12]) for name, m in models.items()]
        columns = ("encoder", "model", "cosine vs float", "sha256")
        print_table(f"compile ({params.target}, {params.data_type})", columns, rows)
        failures = [
            f"{name}: cosine {m.cosine:.5f} < {params.min_cosine}{_worst_layers_text(m)}"
            for name, m in models.items()
            if m.cosine is not None and m.cosine < params.min_cosine
        ]
        if failures:
            raise ValidationFailed(self.name, failures, str(ctx.report_file))
        cosines = ", ".join(f"{name} {_cosine_text(m.cosine)}" for name, m in models.items())
        summary = f"{params.target} {params.data_type}: cosine vs float {cosines}"
        return StageResult(summary=summary, figures=report.to_json())


def _cosine_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def _worst_layers_text(model: model_io.CompiledModel) -> str:
    return f" (worst layers: {describe_layers(list(model.worst_layers))})" if model.worst_layers else ""


def _compile_onnxruntime(
    ctx: StageContext[CompileStageParams], specs: list[EncoderSpec], golden_dir: Path
) -> dict[str, model_io.CompiledModel]:
    from common.hashing import sha256_file
    from toolchains.ort_quant import quantize

    params = ctx.params
    golden = GoldenSet.read(golden_dir)
    models = {}
    for spec in specs:
        output = ctx.out_dir / f"{spec.name}.onnx"
        used = quantize(spec, params, output)
        models[spec.name] = model_io.CompiledModel(
            file=output.name,
            sha256=sha256_file(output),
            cosine=_golden_cosine(spec, output, *golden.pair(golden_dir, spec.output_name)),
            cosine_source="onnxruntime, quantized vs float on verify's golden inputs (min)",
            calibration_samples=used,
        )
    return models


def _golden_cosine(spec: EncoderSpec, quantized: Path, inputs: np.ndarray, reference: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    return min(
        cosine(session.run([spec.output_name], {spec.input_name: row[None]})[0], ref)
        for row, ref in zip(inputs, reference, strict=True)
    )


BUILD_LOCK = ".build.lock"
QUICK_CONNECT_S = 5.0
WORST_LAYERS = 5


def _pulsar2_model_entry(built: BuildResult) -> model_io.CompiledModel:
    """What the report keeps of one build: files, and every row of the precision table."""
    files = {"file": built.axmodel.name, "sha256": built.sha256, "log": built.log.name}
    precision = built.precision
    if precision is None:
        return model_io.CompiledModel(**files, cosine=None, cosine_source=None)
    source = f"pulsar2 precision analysis {precision.analysis}, final output, from {built.precision_source}"
    if precision.analysis.startswith("PerLayer"):
        source += " (PerLayer feeds each layer the float inputs: this row is the output layer alone, not the model)"
    return model_io.CompiledModel(
        **files,
        cosine=precision.final_cosine,
        cosine_source=source,
        precision_table=built.precision_table.name,
        worst_layers=tuple(layer.to_json() for layer in precision.worst(WORST_LAYERS)),
        precision=precision.to_json(),
    )


def _compile_pulsar2(
    ctx: StageContext[CompileStageParams], specs: list[EncoderSpec]
) -> tuple[dict[str, model_io.CompiledModel], dict[str, Any], model_io.Toolchain]:
    from toolchains import pulsar2_build
    from toolchains.docker_engine import open_engine

    params = ctx.params
    host = params.build_host
    configs = pulsar2_build.write_configs(specs, params, ctx.out_dir)
    models = {}
    echo = lambda line: console.print(line, markup=False)  # noqa: E731
    with connect(params.host, host) as transport, open_engine(transport, host) as engine:
        env = pulsar2_build.preflight(transport, engine, host, params)
        # Inputs, builds and downloads share the host's workdir: one controller at a time.
        with exclusive(transport, BUILD_LOCK, host.command_timeout, echo):
            pulsar2_build.stop_stale_containers(transport, env, echo)
            sent = pulsar2_build.upload_inputs(transport, specs, configs)
            echo(f"{params.host}: uploaded {len(sent.sent)} file(s), {len(sent.skipped)} unchanged")
            for spec in specs:
                built = pulsar2_build.build(transport, env, spec, params, ctx.out_dir, echo)
                models[spec.name] = _pulsar2_model_entry(built)
    transfers = {"uploaded": list(sent.sent), "unchanged": list(sent.skipped), "bytes_uploaded": sent.bytes_sent}
    return models, transfers, env.toolchain
