"""The glue behind tasks.py: load the config, run or inspect the graph, print, turn errors into exits."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from invoke.exceptions import Exit
from rich.logging import RichHandler

from commands.serving import ServeRequest
from common.errors import UserError
from pipeline.errors import PipelineError, is_user_error, user_message
from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, StageOutcome, plan, run
from pipeline.terminal import console, print_table
from stages.config import PipelineConfig, load_config

DEFAULT_CONFIG = "pipeline.yaml"
_STYLE = {
    Outcome.RAN: "green",
    Outcome.UP_TO_DATE: "cyan",
    Outcome.WOULD_RUN: "yellow",
    Outcome.FAILED: "red",
    Outcome.SKIPPED: "yellow",
}


def setup_logging(verbose: bool) -> None:
    if not verbose:
        # Read when transformers and huggingface_hub first configure themselves (after this, lazily):
        # no library warnings below errors, no `\r` progress bars in logs.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    for noisy in ("transformers", "onnxslim", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # paramiko logs a traceback for every failed handshake; our error says what failed, in one line.
    logging.getLogger("paramiko").setLevel(logging.INFO if verbose else logging.CRITICAL)
    # huggingface_hub prints its own retry warnings (useful on a flaky network); don't print them twice.
    logging.getLogger("huggingface_hub").propagate = False


@contextmanager
def user_errors() -> Iterator[None]:
    """A user error of either side ends the command with its one-line message and exit code 1, never a
    traceback."""
    try:
        yield
    except Exception as exc:
        if not is_user_error(exc):
            raise
        raise Exit(f"error: {user_message(exc)}", code=1) from None


def graph(config: PipelineConfig) -> StageGraph:
    """The config's stages: the CLIP model's, and the tagger's when it has a `tagger:`."""
    from stages import stages_for

    return StageGraph(stages_for(config))


def load(config_path: str | None) -> PipelineConfig:
    return load_config(Path(config_path or DEFAULT_CONFIG))


class ConsoleReporter:
    def stage_started(self, stage: str, reasons: tuple[str, ...]) -> None:
        console.print(f"[bold]{stage}[/]: running ({'; '.join(reasons)})")

    def stage_finished(self, outcome: StageOutcome) -> None:
        style = _STYLE[outcome.outcome]
        line = f"[bold]{outcome.stage}[/]: [{style}]{outcome.outcome.value}[/]"
        if outcome.outcome is Outcome.WOULD_RUN:
            line += f" ({'; '.join(outcome.reasons)})"
        if outcome.summary:
            line += f" - {outcome.summary}"
        console.print(line)


def run_stages(config_path: str | None, request: RunRequest, host: str | None = None) -> None:
    """Run the request; `host` replaces the host of the one targeted stage (`invoke compile --host mac`)."""
    with user_errors():
        config = load(config_path)
        if host is not None:
            for target in request.targets or ():
                config = config.with_host(target, host)
        started = time.perf_counter()
        try:
            outcomes = run(config, graph(config), request, ConsoleReporter())
        except KeyboardInterrupt:
            raise Exit(
                "interrupted: the running stage was stopped (remote containers too) and its partial outputs "
                "removed; the last good artifacts are kept. Run the same command again to resume.",
                code=130,
            ) from None
        wall = time.perf_counter() - started
    report = _write_report(config, outcomes) if not request.dry_run else None
    _print_summary(outcomes, wall)
    if report:
        console.print(f"report: {report}", markup=False, soft_wrap=True)
    failed = [o for o in outcomes if o.outcome is Outcome.FAILED]
    if failed:
        raise Exit("error: " + "; ".join(o.summary for o in failed), code=1)


def _write_report(config: PipelineConfig, outcomes: list[StageOutcome]) -> Path | None:
    """artifacts/reports/index.html after every run; a report that cannot be made never fails the run."""
    from commands.report_page import write_index, write_run

    try:
        write_run(config.artifacts / "reports", outcomes)
        return write_index(config)
    except (OSError, UserError) as exc:
        logging.getLogger(__name__).warning("could not write the build report: %s", exc)
        return None


def _print_summary(outcomes: list[StageOutcome], wall: float) -> None:
    rows = [
        (
            o.stage,
            f"[{_STYLE[o.outcome]}]{o.outcome.value}[/]",
            f"{o.seconds:.1f}s" if o.outcome in (Outcome.RAN, Outcome.FAILED) else "",
            "; ".join(o.reasons) if o.outcome is not Outcome.UP_TO_DATE else "",
        )
        for o in outcomes
    ]
    print_table(f"pipeline summary ({wall:.1f}s)", ("stage", "result", "time", "why"), rows)


def show_status(config_path: str | None) -> None:
    """Each stage: up to date, or stale and every reason reasons."""
    with user_errors():
        config = load(config_path)
        decisions = plan(config, graph(config), RunRequest())
    rows = [
        (stage.name, "[cyan]up to date[/]" if not d.stale else "[yellow]stale[/]", "\n".join(d.reasons))
        for stage, d in decisions
    ]
    print_table(f"status ({config.artifacts})", ("stage", "status", "why"), rows)
    print_table("devices (as the last fetch and smoke-test left them)", DEVICE_COLUMNS, device_rows(config))


DEVICE_COLUMNS = ("device", "host", "model set", "smoke test", "runtime there")


def device_rows(config: PipelineConfig) -> list[tuple[str, str, str, str, str]]:
    """A row per device of the config: the set fetch last put there, what its smoke test measured and the
    Python and packages it ran with."""
    from deploy.fleet import DEVICES_DIR
    from runtime.smoke_test import SmokeReport
    from stages.fetch import TransferRecord

    rows = []
    for device in config.fleet():
        try:
            transfer = TransferRecord.read(config.artifacts / "fetch" / DEVICES_DIR / device.name)
            models = f"{transfer.set.rsplit('/', 1)[-1]} ({transfer.link})"
        except UserError:
            models = "[yellow]not fetched[/]"
        try:
            report = SmokeReport.read(config.artifacts / "smoke-test" / DEVICES_DIR / device.name)
            image, text = report.encoders["image"], report.encoders["text"]
            smoke = f"cosine {image.cosine_min:.4f} / {text.cosine_min:.4f}, p50 {image.latency_ms.p50:.1f} ms"
            packages = ", ".join(f"{name} {version}" for name, version in report.packages.items())
            runtime = f"Python {report.python}" + (f": {packages}" if packages else "")
        except (UserError, KeyError):
            smoke = runtime = "[yellow]not tested[/]"
        rows.append((device.name, config.host(device.host).describe(), models, smoke, runtime))
    return rows


def device_models_dir(config: PipelineConfig | None, models: str | None) -> Path:
    """--models, or the models dir that fetch fills when the device is this machine (then `config` is
    the loaded config; callers load it once, when --models is not given)."""
    if models:
        return Path(models)
    assert config is not None
    device = config.device
    host = config.host(device.host)
    if host.kind != "local":
        raise PipelineError(
            f"the device ({device.host}) is not this machine",
            hint="pass --models DIR with models fetched here, or --config examples/local.yaml (the built-in "
            "tiny CLIP, after `invoke all --config examples/local.yaml`), or run it on the device",
        )
    return Path(host.workdir) / device.models_dir


def serve_command(
    config_path: str | None,
    host: str | None,
    models: str | None,
    request: ServeRequest,
    flags: dict[str, bool] | None = None,
) -> None:
    """Foreground here, or start/stop/inspect the background servers on devices: `--host` (a device, a comma
    list, all), else every device when they are other machines (`--models` always means here)."""
    from commands import serving

    with user_errors():
        action = serving.ServeAction.of(**(flags or {}))
        config = None if models else load(config_path)
        if host is None and config is not None and (config.devices or config.host(config.device.host).kind != "local"):
            host = "all"  # the devices are other machines: serve there, as `--host` would
        if host is None:
            if action is not serving.ServeAction.START:
                raise PipelineError(f"--{action.value} is for servers on hosts", hint="add --host")
            code = serving.serve_here(
                device_models_dir(config, models), request.for_device(config.fleet()[0]) if config else request
            )
            if code:
                raise Exit(code=1)  # the server printed its one `error:` line
            return
        if config is None:
            raise PipelineError("--models is for a server here; on a host it serves the models fetch put there")
        devices = config.with_devices(host)
        if action is serving.ServeAction.PRINT_NGINX:
            console.print(serving.nginx_for(devices, str(request.port or 7860)), markup=False, soft_wrap=True)
        elif action is serving.ServeAction.STOP:
            serving.stop_on_devices(devices)
        elif action is serving.ServeAction.STATUS:
            if not serving.status_on_devices(devices):
                raise Exit(code=1)
        elif action is serving.ServeAction.UNINSTALL:
            serving.uninstall_on_devices(devices)
        else:
            serving.start_on_devices(devices, request, as_service=action is serving.ServeAction.INSTALL)
