"""smoke-test: on the device, through runtime/, the compiled models against the float reference.

Puts runtime/ and its virtualenv on the device beside the fetched models (stages/device_runtime.py),
runs `python -m runtime.smoke_test` and brings back its JSON report: per-encoder cosine vs the float
reference, latency p50/p95, peak RSS, backend, provider. Every selected device at once (deploy/fleet.py):
`smoke-test/devices/<name>/smoke-report.json`, and `reports/smoke-test/<name>.json` for each attempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator, Field

from deploy.device_config import DeviceParams, DeviceStage, FleetParams, moved_to_device
from deploy.device_runtime import install_runtime, runtime_files
from deploy.fleet import DEVICES_DIR, DeviceOutcome, failures, on_each, print_outcomes
from modeling.tagger_config import TaggerConfig
from pipeline.config import Strict
from pipeline.errors import StageError, ValidationFailed
from pipeline.hosts import connect
from pipeline.hosts.base import quote
from pipeline.hosts.sync import download
from pipeline.stage import StageContext, StageResult
from pipeline.terminal import console, counted, print_table
from runtime.smoke_test import SmokeReport

if TYPE_CHECKING:
    from stages.config import PipelineConfig


class SmokeTestParams(Strict):
    runs: int = Field(20, ge=1, le=10000)  # latency samples per encoder
    min_cosine: float = Field(0.98, ge=0, le=1)  # device output vs the float reference, per encoder
    provider: str | None = None  # axengine provider; None: the first available
    device_id: int = Field(0, ge=0)  # AXCLRTExecutionProvider: which card
    # In every category of the caption and the tags, the share of verify's photos whose first pick on the device
    # is the float model's (runtime/agreement.py); 0 reports without judging.
    min_top1_agreement: float = Field(0.5, ge=0, le=1)


class SmokeTestStageParams(SmokeTestParams, FleetParams):
    """The smoke test's settings and the devices."""


class TaggerSmokeTestParams(SmokeTestStageParams):
    """With a tagger in the set: its bars and the agreement its tags must reach."""

    tagger: TaggerConfig


class SmokeTestStage(DeviceStage):
    name = "smoke-test"
    help = "Run the compiled models on the device (--host) against the float reference; latency and memory."
    after = ("verify", "fetch")
    outputs = (DEVICES_DIR,)
    settings = Annotated[SmokeTestParams, BeforeValidator(moved_to_device)]

    def __init__(self, tagger: bool = False) -> None:
        """With `tagger`, the set's WD tagger is tested too: its probabilities and its tags against the float
        model's on tagger-verify's photos."""
        self.tagger = tagger

    def shipped_files(self) -> list[Path]:
        return runtime_files()

    def params(self, config: PipelineConfig) -> SmokeTestStageParams:
        if self.tagger:
            return TaggerSmokeTestParams.for_fleet(config, **dict(config.stages.smoke_test), tagger=config.tagger)
        return SmokeTestStageParams.for_fleet(config, **dict(config.stages.smoke_test))

    def run(self, ctx: StageContext[SmokeTestStageParams]) -> StageResult:
        params = ctx.params
        outcomes = on_each(params.devices, lambda device: self._test_on(device, ctx))
        print_outcomes(
            f"smoke test on {len(outcomes)} devices",
            outcomes,
            ("cosine image / text", "p50 image / text ms", "peak RSS MB"),
            lambda r: (
                f"{r.figures['cosine']['image']:.5f} / {r.figures['cosine']['text']:.5f}",
                f"{r.figures['p50_ms']['image']:.1f} / {r.figures['p50_ms']['text']:.1f}",
                f"{r.figures['peak_rss_mb']:.0f}",
            ),
        )
        failed = failures(outcomes)
        if failed:
            raise StageError(self.name, f"{len(failed)} of {len(outcomes)} devices failed: " + "; ".join(failed))
        return _combined(outcomes)

    def _test_on(self, device: DeviceParams, ctx: StageContext[SmokeTestStageParams]) -> StageResult:
        params = ctx.params
        out_dir = ctx.out_dir / DEVICES_DIR / device.name
        out_dir.mkdir(parents=True)
        with connect(device.host, device.connection) as transport:
            app, python = install_runtime(transport, device.connection.python)
            remote_report = transport.path("smoke-test-report.json")
            command = (
                f"cd {quote(app)} && {quote(python)} -m runtime.smoke_test"
                f" --models {quote(transport.path(device.models_dir))}"
                f" --runs {params.runs} --device-id {params.device_id} --report {quote(remote_report)}"
            )
            if params.provider:
                command += f" --provider {quote(params.provider)}"
            if isinstance(params, TaggerSmokeTestParams):
                command += f" --tag-thresholds {params.tagger.threshold},{params.tagger.character_threshold}"
            if device.npu_lock:
                command += f" --npu-lock {quote(transport.path(device.npu_lock))}"
            result = transport.run(
                command, on_line=lambda line: console.print(f"[{transport.name}] {line}", markup=False)
            )
            if not transport.run(f"test -f {quote(remote_report)}").ok:
                raise StageError(
                    self.name,
                    f"the smoke test wrote no report on {device.name} (exit {result.exit_code})",
                    hint="\n".join(result.tail()),
                )
            download(transport, remote_report, out_dir / SmokeReport.FILE)
        report = SmokeReport.read(out_dir)
        report_path = report.write_to(ctx.part_report_file(device.name))
        if report.error:
            raise StageError(self.name, f"on {device.name}: {report.error}")
        return _judge(report, params, device.name, report_path)


def _combined(outcomes: list[DeviceOutcome[StageResult]]) -> StageResult:
    """One device's summary as it is; several: the worst figures, and each device's in the lock file."""
    results = {o.device: o.result for o in outcomes if o.result is not None}
    if len(results) == 1:
        return next(iter(results.values()))
    worst = {part: min(r.figures["cosine"][part] for r in results.values()) for part in ("image", "text")}
    slowest = {part: max(r.figures["p50_ms"][part] for r in results.values()) for part in ("image", "text")}
    return StageResult(
        summary=f"{len(results)} devices: worst cosine image {worst['image']:.5f}, text {worst['text']:.5f}; "
        f"slowest p50 {slowest['image']:.1f} / {slowest['text']:.1f} ms",
        figures={"devices": {name: r.figures for name, r in results.items()}},
    )


def _judge(report: SmokeReport, params: SmokeTestParams, device: str, report_path: Path) -> StageResult:
    min_cosine = params.min_cosine
    failures = _agreement_failures(report, params.min_top1_agreement, device)
    if isinstance(params, TaggerSmokeTestParams):
        failures += _tag_failures(report, params.tagger, device)
    failures += [
        f"{part} encoder cosine {encoder.cosine_min:.5f} < {min_cosine}"
        for part, encoder in report.encoders.items()
        if encoder.cosine_min < min_cosine
    ]
    print_table(
        f"smoke test on {device} (peak RSS {report.peak_rss_mb:.0f} MB)", report.ENCODER_COLUMNS, report.encoder_rows()
    )
    if failures:
        raise ValidationFailed("smoke-test", [f"{device}: {failure}" for failure in failures], str(report_path))
    image, text = report.encoders["image"], report.encoders["text"]
    agreement = report.agreement
    same = f"; picks as float: top-1 {agreement.top1_min:.0%} (worst category)" if agreement else ""
    tags = report.tag_agreement
    if tags:
        same += f"; tags as float: Jaccard {tags.jaccard:.2f}, same set on {tags.same_set:.0%}"
    return StageResult(
        summary=f"cosine image {image.cosine_min:.5f}, text {text.cosine_min:.5f}{same}; "
        f"p50 {image.latency_ms.p50:.1f} / {text.latency_ms.p50:.1f} ms; peak RSS {report.peak_rss_mb:.0f} MB",
        figures={
            "top1_agreement_min": agreement.top1_min if agreement else None,
            "tag_agreement": {"jaccard": tags.jaccard, "same_set": tags.same_set} if tags else None,
            "cosine": {part: encoder.cosine_min for part, encoder in report.encoders.items()},
            "p50_ms": {part: encoder.latency_ms.p50 for part, encoder in report.encoders.items()},
            "encoders": {
                part: {key: encoder[key] for key in ("cosine_min", "latency_ms", "load_s", "resident_mb")}
                for part, encoder in report.to_json()["encoders"].items()
            },
            "peak_rss_mb": report.peak_rss_mb,
            "python": report.python,
            "packages": report.packages,
        },
    )


def _agreement_failures(report: SmokeReport, minimum: float, device: str) -> list[str]:
    """The agreement table in the terminal; a failure per category below the minimum."""
    agreement = report.agreement
    if agreement is None:
        return []
    print_table(
        f"{device}: device picks vs float picks, {counted(agreement.photos, 'photo')} "
        f"({counted(len(agreement.changed), 'caption differs', 'captions differ')})",
        agreement.COLUMNS,
        agreement.rows(),
    )
    return [
        f"{c.category}: the first pick matches the float model's on {c.top1:.0%} of the photos "
        f"(stages.smoke-test.min_top1_agreement {minimum:g})"
        for c in agreement.categories
        if c.judged and c.top1 < minimum
    ]


def _tag_failures(report: SmokeReport, tagger: TaggerConfig, device: str) -> list[str]:
    """Each photo whose tags changed in the terminal; a failure when the mean overlap is below the bar."""
    tags = report.tag_agreement
    if tags is None:
        return ["the set's tagger was not tested (is the device's runtime older than the controller's?)"]
    title = (
        f"{device}: tags vs the float tagger's at {tagger.threshold:g} / {tagger.character_threshold:g}: Jaccard "
        f"{tags.jaccard:.2f}, the same set on {tags.same_set:.0%} of {counted(tags.photos, 'photo')}"
    )
    if tags.changed:
        rows = [(c.photo, " ".join(c.lost) or "-", " ".join(c.gained) or "-") for c in tags.changed]
        print_table(title, ("photo", "tags lost", "tags gained"), rows)
    else:
        console.print(title, markup=False)
    if tags.jaccard >= tagger.min_agreement:
        return []
    return [
        f"tagger: the device's tags overlap the float model's by {tags.jaccard:.2f} "
        f"(tagger.min_agreement {tagger.min_agreement:g})"
    ]
