"""smoke-test: on the device, through runtime/, the compiled models against the float reference.

Puts runtime/ and its virtualenv on the device beside the fetched models (pipeline/device_app.py),
runs `python -m runtime.smoke_test` and brings back its JSON report: per-encoder cosine vs the float
reference, latency p50/p95, peak RSS, backend, provider.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.device_app import install_runtime
from pipeline.errors import StageError, ValidationFailed
from pipeline.files import write_json
from pipeline.hosts import connect
from pipeline.hosts.base import quote
from pipeline.hosts.sync import download
from pipeline.report import console, print_table
from pipeline.stage import Stage, StageContext, StageResult, device_params

REPORT_FILE = "report.json"


class SmokeTestStage(Stage):
    name = "smoke-test"
    help = "Run the compiled models on the device (--host) against the float reference; latency and memory."
    after = ("verify", "fetch")
    outputs = (REPORT_FILE,)
    code_modules = ("runtime.smoke_test", "runtime.backends", "runtime.clip", "runtime.npu")

    def params(self, config: PipelineConfig) -> dict[str, Any]:
        return {**device_params(config, config.stages.smoke_test), "npu_lock": config.device.npu_lock}

    def run(self, ctx: StageContext) -> StageResult:
        params, device = ctx.config.stages.smoke_test, ctx.config.device
        host = ctx.config.host(device.host)
        with connect(ctx.config, device.host) as transport:
            app, python = install_runtime(transport, host.python)
            remote_report = transport.path("smoke-test-report.json")
            command = (
                f"cd {quote(app)} && {quote(python)} -m runtime.smoke_test"
                f" --models {quote(transport.path(device.models_dir))}"
                f" --runs {params.runs} --device-id {params.device_id} --report {quote(remote_report)}"
            )
            if params.provider:
                command += f" --provider {quote(params.provider)}"
            if ctx.config.device.npu_lock:
                command += f" --npu-lock {quote(ctx.config.device.npu_lock)}"
            result = transport.run(
                command, on_line=lambda line: console.print(f"[{transport.name}] {line}", markup=False)
            )
            if not transport.run(f"test -f {quote(remote_report)}").ok:
                raise StageError(
                    self.name,
                    f"the smoke test wrote no report (exit {result.exit_code})",
                    hint="\n".join(result.tail()),
                )
            download(transport, remote_report, ctx.out_dir / REPORT_FILE)
        report = json.loads((ctx.out_dir / REPORT_FILE).read_text(encoding="utf-8"))
        write_json(ctx.reports_dir / "smoke-test.json", report)
        if "error" in report:
            raise StageError(self.name, f"on {device.host}: {report['error']}")
        return _judge(report, params.min_cosine, device.host, ctx.reports_dir / "smoke-test.json")


def _judge(report: dict[str, Any], min_cosine: float, host: str, report_path: Path) -> StageResult:
    rows, failures = [], []
    for part, encoder in report["encoders"].items():
        latency = encoder["latency_ms"]
        rows.append(
            (
                part,
                f"{encoder['backend']} ({encoder['provider']})",
                f"{encoder['cosine_min']:.5f}",
                f"{latency['p50']:.1f} / {latency['p95']:.1f}",
                f"{encoder['load_s']:.2f} s, +{encoder['resident_mb']:.0f} MB",
            )
        )
        if encoder["cosine_min"] < min_cosine:
            failures.append(f"{part} encoder cosine {encoder['cosine_min']:.5f} < {min_cosine}")
    print_table(
        f"smoke test on {host} (peak RSS {report['peak_rss_mb']:.0f} MB)",
        ("encoder", "backend", "cosine vs float (min)", "latency ms p50 / p95", "load, host memory"),
        rows,
    )
    if failures:
        raise ValidationFailed("smoke-test", failures, str(report_path))
    image, text = report["encoders"]["image"], report["encoders"]["text"]
    return StageResult(
        summary=f"cosine image {image['cosine_min']:.5f}, text {text['cosine_min']:.5f}; "
        f"p50 {image['latency_ms']['p50']:.1f} / {text['latency_ms']['p50']:.1f} ms; "
        f"peak RSS {report['peak_rss_mb']:.0f} MB",
        figures={
            "encoders": {
                k: {key: v[key] for key in ("cosine_min", "latency_ms", "load_s", "resident_mb")}
                for k, v in report["encoders"].items()
            },
            "peak_rss_mb": report["peak_rss_mb"],
        },
    )
