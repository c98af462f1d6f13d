"""smoke-test: on the device, through runtime/, the compiled models against the float reference.

Puts runtime/ and its virtualenv on the device beside the fetched models (stages/device_runtime.py),
runs `python -m runtime.smoke_test` and brings back its JSON report: per-encoder cosine vs the float
reference, latency p50/p95, peak RSS, backend, provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator, Field

from deploy.device_config import DeviceParams, DeviceStage, moved_to_device
from deploy.device_runtime import install_runtime, runtime_files
from pipeline.config import Strict
from pipeline.errors import StageError, ValidationFailed
from pipeline.hosts import connect
from pipeline.hosts.base import quote
from pipeline.hosts.sync import download
from pipeline.stage import StageContext, StageResult
from pipeline.terminal import console, print_table
from runtime.smoke_test import SmokeReport

if TYPE_CHECKING:
    from stages.config import PipelineConfig


class SmokeTestParams(Strict):
    runs: int = Field(20, ge=1, le=10000)  # latency samples per encoder
    min_cosine: float = Field(0.98, ge=0, le=1)  # device output vs the float reference, per encoder
    provider: str | None = None  # axengine provider; None: the first available
    device_id: int = Field(0, ge=0)  # AXCLRTExecutionProvider: which card
    # In every vocabulary category, the share of verify's photos whose first pick on the device is the float
    # model's (runtime/agreement.py); 0 reports without judging.
    min_top1_agreement: float = Field(0.5, ge=0, le=1)


class SmokeTestStageParams(SmokeTestParams, DeviceParams):
    """The smoke test's settings, the device, and the NPU lock it holds there."""

    npu_lock: str | None


class SmokeTestStage(DeviceStage):
    name = "smoke-test"
    help = "Run the compiled models on the device (--host) against the float reference; latency and memory."
    after = ("verify", "fetch")
    outputs = (SmokeReport.FILE,)
    settings = Annotated[SmokeTestParams, BeforeValidator(moved_to_device)]

    def shipped_files(self) -> list[Path]:
        return runtime_files()

    def params(self, config: PipelineConfig) -> SmokeTestStageParams:
        return SmokeTestStageParams.for_device(
            config, **dict(config.stages.smoke_test), npu_lock=config.device.npu_lock
        )

    def run(self, ctx: StageContext[SmokeTestStageParams]) -> StageResult:
        params = ctx.params
        with connect(params.host, params.connection) as transport:
            app, python = install_runtime(transport, params.connection.python)
            remote_report = transport.path("smoke-test-report.json")
            command = (
                f"cd {quote(app)} && {quote(python)} -m runtime.smoke_test"
                f" --models {quote(transport.path(params.models_dir))}"
                f" --runs {params.runs} --device-id {params.device_id} --report {quote(remote_report)}"
            )
            if params.provider:
                command += f" --provider {quote(params.provider)}"
            if params.npu_lock:
                command += f" --npu-lock {quote(params.npu_lock)}"
            result = transport.run(
                command, on_line=lambda line: console.print(f"[{transport.name}] {line}", markup=False)
            )
            if not transport.run(f"test -f {quote(remote_report)}").ok:
                raise StageError(
                    self.name,
                    f"the smoke test wrote no report (exit {result.exit_code})",
                    hint="\n".join(result.tail()),
                )
            download(transport, remote_report, ctx.out_dir / SmokeReport.FILE)
        report = SmokeReport.read(ctx.out_dir)
        report.write_to(ctx.report_file)
        if report.error:
            raise StageError(self.name, f"on {params.host}: {report.error}")
        return _judge(report, params, ctx.report_file)


def _judge(report: SmokeReport, params: SmokeTestStageParams, report_path: Path) -> StageResult:
    min_cosine, host = params.min_cosine, params.host
    failures = _agreement_failures(report, params.min_top1_agreement)
    failures += [
        f"{part} encoder cosine {encoder.cosine_min:.5f} < {min_cosine}"
        for part, encoder in report.encoders.items()
        if encoder.cosine_min < min_cosine
    ]
    print_table(
        f"smoke test on {host} (peak RSS {report.peak_rss_mb:.0f} MB)", report.ENCODER_COLUMNS, report.encoder_rows()
    )
    if failures:
        raise ValidationFailed("smoke-test", failures, str(report_path))
    image, text = report.encoders["image"], report.encoders["text"]
    agreement = report.agreement
    same = f"; picks as float: top-1 {agreement.top1_min:.0%} (worst category)" if agreement else ""
    return StageResult(
        summary=f"cosine image {image.cosine_min:.5f}, text {text.cosine_min:.5f}{same}; "
        f"p50 {image.latency_ms.p50:.1f} / {text.latency_ms.p50:.1f} ms; peak RSS {report.peak_rss_mb:.0f} MB",
        figures={
            "top1_agreement_min": agreement.top1_min if agreement else None,
            "encoders": {
                part: {key: encoder[key] for key in ("cosine_min", "latency_ms", "load_s", "resident_mb")}
                for part, encoder in report.to_json()["encoders"].items()
            },
            "peak_rss_mb": report.peak_rss_mb,
        },
    )


def _agreement_failures(report: SmokeReport, minimum: float) -> list[str]:
    """The agreement table in the terminal; a failure per category below the minimum."""
    agreement = report.agreement
    if agreement is None:
        return []
    print_table(
        f"device picks vs float picks, {agreement.photos} photos ({len(agreement.changed)} captions differ)",
        agreement.COLUMNS,
        agreement.rows(),
    )
    return [
        f"{c.category}: the first pick matches the float model's on {c.top1:.0%} of the photos "
        f"(stages.smoke-test.min_top1_agreement {minimum:g})"
        for c in agreement.categories
        if c.top1 < minimum
    ]
