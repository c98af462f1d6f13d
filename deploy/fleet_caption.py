"""`invoke caption` across the fleet, on Dask distributed: the scheduler runs here, one worker per device is
started over SSH in the device's runtime virtualenv (resource NPU=1, two batches at once, the interrogator
opened once by a worker plugin: runtime/fleet_worker.py), images are read here and sent as bytes, and each
caption is written here as it completes (a .txt per image and captions.jsonl naming the device, resumable as
ever).

A worker lost mid-run (unplugged, killed) costs only its in-flight images: Dask's scheduler runs them again on
another worker, and since each image is one future written when it completes, every image is captioned
once. All traffic is TLS with a certificate made for this run (distributed's Security.temporary): the
scheduler unpickles what its peers send, so nobody without the certificate may talk to it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, LocalCluster, wait
from distributed.scheduler import KilledWorker
from distributed.security import Security

from deploy.background import Background, put_private
from deploy.device_config import NamedDevice, WithDevices
from deploy.device_runtime import install_runtime
from deploy.fleet import failures, on_each
from pipeline.errors import HostError, PipelineError
from pipeline.hosts import Transport, connect
from pipeline.hosts.base import quote
from pipeline.terminal import console
from runtime.captioning import CaptionRun, CaptionSummary, CaptionWriter
from runtime.fleet_worker import (
    BATCHES_PER_DEVICE,
    NPU,
    DeviceSettings,
    InterrogatorPlugin,
    batch_answers,
    caption_batch,
    plugin_error,
)
from runtime.manifest import CURRENT_SET

# caption-worker.log, caption-worker.pid in the device's workdir
# Dask's statistical profiler (a thread that walks every thread's stack each 10 ms) feeds only the dashboard,
# which our workers do not run; off, a device's worker spends ~10% less CPU an image (bench/fleet.py).
WORKER = Background(
    "caption-worker", "distributed.cli.dask_worker", (("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False"),)
)
TLS_DIR = ".caption-tls"
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")  # what the run puts there, and all it removes
JOIN_TIMEOUT_S = 120  # from starting the workers to every one having joined (a first venv build is earlier)
NO_WORKER_TIMEOUT_S = 60  # with no worker left, how long to wait for one before giving up
BATCH_IMAGES = 16  # images per Dask task, at most
BATCH_BYTES = 32 * 1024 * 1024  # and at most this many bytes of them
IN_FLIGHT_PER_WORKER = BATCHES_PER_DEVICE + 1  # batches sent a worker: those running and one waiting
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a file larger than this is reported, not sent
DASK_LOG = "fleet-dask.log"  # beside captions.jsonl: Dask's own log records of the last run
_DASK = {"distributed", "tornado", "bokeh"}  # the top-level loggers Dask configures handlers on


@dataclass(frozen=True)
class FleetCaptionJob:
    run: CaptionRun  # the folder, the style (its labels' part travels to the devices), a question
    mode: str | None = None  # clip-interrogator's prompt mode
    preload: tuple[str, ...] = ()  # Dask `--preload` modules or files for every worker (bench/fleet.py's stand-in)
    tagger: bool = False  # booru tags from the tagger of each device's set instead of CLIP's caption


@dataclass
class FleetProgress:
    """Images captioned per device since the start: what the progress bar shows as images/s."""

    started: float = field(default_factory=time.perf_counter)
    per_device: dict[str, int] = field(default_factory=dict)

    def add(self, device: str) -> None:
        self.per_device[device] = self.per_device.get(device, 0) + 1

    def rates(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return "  ".join(f"{name} {count / elapsed:.1f}/s" for name, count in sorted(self.per_device.items()))


def caption_on_fleet(
    config: WithDevices, job: FleetCaptionJob, on_image: Callable[[Path, FleetProgress], None]
) -> CaptionSummary:
    """Caption every image of the job on the config's devices; workers stopped at the end, whatever happens.
    Dask's own log records (the scheduler's and the client's: workers joining and leaving, connections) go
    to DASK_LOG beside the answers, not between the progress bar and the summary; its path is printed when
    the run fails."""
    log = job.run.folder / DASK_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with _dask_logs_to(log):
        try:
            return _caption_on_fleet(config, job, on_image)
        except Exception:
            console.print(f"Dask's log of this run: {log}", markup=False, soft_wrap=True)
            raise


@contextmanager
def _dask_logs_to(file: Path) -> Iterator[None]:
    """Dask's loggers (distributed, tornado, bokeh and theirs) write to `file` while the block runs: their
    terminal handlers set aside, and no record passed on to the root logger's (the command's own)."""
    handler = logging.FileHandler(file, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    names = set(_DASK) | {name for name in list(logging.root.manager.loggerDict) if name.split(".")[0] in _DASK}
    loggers = [logging.getLogger(name) for name in sorted(names)]
    saved = {logger: (logger.handlers[:], logger.propagate) for logger in loggers}
    for logger in loggers:
        terminal = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        logger.handlers = [h for h in logger.handlers if h not in terminal]
        if logger.name in _DASK or terminal:
            logger.handlers.append(handler)
            logger.propagate = False
    try:
        yield
    finally:
        for logger, (handlers, propagate) in saved.items():
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def _caption_on_fleet(
    config: WithDevices, job: FleetCaptionJob, on_image: Callable[[Path, FleetProgress], None]
) -> CaptionSummary:
    devices = config.fleet()
    security = Security.temporary()
    loopback = all(_is_loopback(config, device) for device in devices)
    cluster = LocalCluster(
        n_workers=0,
        processes=False,
        protocol="tls://",
        host="127.0.0.1" if loopback else "0.0.0.0",
        scheduler_port=0,
        security=security,
        dashboard_address="127.0.0.1:0",  # plain HTTP: this machine only
    )
    with cluster, Client(cluster, security=security) as client:
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        if _has_dashboard():
            console.print(f"Dask dashboard: {client.dashboard_link}", markup=False)
        started = on_each(devices, lambda device: _start_worker(config, device, port, security, job.preload))
        try:
            _raise_if_none_started(started, len(devices))
            _wait_for_workers(client, [o.device for o in started if o.ok])
            plugin = InterrogatorPlugin(
                {device.name: o.result for device, o in zip(devices, started, strict=True) if o.result is not None},
                job.run.style.options(),
                job.mode,
                job.run.question,
                tag_style=job.run.style if job.tagger else None,
            )
            _set_up(client, plugin)
            return _caption(client, job, on_image)
        finally:
            on_each(devices, lambda device: _stop_worker(config, device))


Batch = list[tuple[Path, Path, bytes]]  # (image, its .txt, its bytes)


def _caption(client: Client, job: FleetCaptionJob, on_image: Callable[[Path, FleetProgress], None]) -> CaptionSummary:
    progress = FleetProgress()
    with CaptionWriter.open(job.run) as writer:
        _caption_batches(client, writer, job, lambda path: on_image(path, progress), progress)
        return writer.summary


def _caption_batches(
    client: Client,
    writer: CaptionWriter,
    job: FleetCaptionJob,
    on_image: Callable[[Path], None],
    progress: FleetProgress,
) -> None:
    """Batches sent as workers take them, answers written as they come (IN_FLIGHT_PER_WORKER batches a worker)."""
    todo = writer.todo(on_image)
    batches = _batches(todo, writer, on_image)
    in_flight: dict[Future, Batch] = {}

    def send_next() -> None:
        batch = next(batches, None)
        if batch:
            future = client.submit(
                caption_batch, [data for *_, data in batch], resources={NPU: 1 / BATCHES_PER_DEVICE}, pure=False
            )
            in_flight[future] = batch

    for _ in range(IN_FLIGHT_PER_WORKER * max(len(client.scheduler_info()["workers"]), 1)):
        send_next()
    idle_since: float | None = None
    while in_flight:
        done = wait(list(in_flight), timeout=5, return_when="FIRST_COMPLETED").done
        if not done:
            idle_since = _check_workers_left(client, idle_since)
            continue
        idle_since = None
        for future in done:
            batch = in_flight.pop(future)
            for (image_path, target, _), answer in zip(batch, _answers(future, len(batch)), strict=True):
                _write(writer, image_path, target, answer, progress)
                on_image(image_path)
            send_next()


def _batches(todo: list[tuple[Path, Path]], writer: CaptionWriter, skipped: Callable[[Path], None]) -> Iterator[Batch]:
    """The images to send, read as they are needed (so memory stays bounded on any folder), a few per task:
    every Dask task costs the scheduler, the worker and this process some milliseconds of CPU."""
    batch: Batch = []
    size = 0
    for image_path, target in todo:
        try:  # a file may go away or change while the run goes on: unreadable, as local captioning says
            if image_path.stat().st_size > MAX_IMAGE_BYTES:
                raise ValueError(f"larger than {MAX_IMAGE_BYTES // 2**20} MB")
            data = image_path.read_bytes()
        except (OSError, ValueError) as exc:
            writer.failed(image_path, str(exc) or type(exc).__name__)
            skipped(image_path)
            continue
        batch.append((image_path, target, data))
        size += len(data)
        if len(batch) == BATCH_IMAGES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _answers(future: Future, count: int) -> list[dict[str, Any]]:
    """A finished batch's answers; a batch that brought down worker after worker (Dask gives up after
    `distributed.scheduler.allowed-failures`) is an error for each of its images, not the end of the run."""
    try:
        answers = batch_answers(future.result())
    except KilledWorker as exc:
        return [{"error": f"every worker that took it died ({exc})"}] * count
    finally:
        future.release()  # its result is written: the scheduler need not keep it, nor rerun it on a lost worker
    return answers


def _write(
    writer: CaptionWriter, image_path: Path, target: Path, answer: dict[str, Any], progress: FleetProgress
) -> None:
    if "error" in answer:
        writer.failed(image_path, answer["error"])
        return
    writer.write(image_path, target, answer["text"], {**answer["record"], "device": answer["device"]})
    progress.add(answer["device"])


def _check_workers_left(client: Client, idle_since: float | None) -> float:
    """Nothing finished for a while: fine while workers remain; with none for NO_WORKER_TIMEOUT_S, stop."""
    now = time.monotonic()
    if client.scheduler_info()["workers"]:
        return now
    if idle_since is not None and now - idle_since > NO_WORKER_TIMEOUT_S:
        raise PipelineError(
            f"no device's worker has been left for {NO_WORKER_TIMEOUT_S} s; the captions made so far are written",
            hint=f"see {WORKER.name}.log in each device's workdir, then run the same command again to go on",
        )
    return idle_since if idle_since is not None else now


def _set_up(client: Client, plugin: InterrogatorPlugin) -> None:
    """Every worker opens its interrogator; one that cannot is retired (its device named), none: the end."""
    client.register_plugin(plugin)
    names = {address: w["name"] for address, w in client.scheduler_info()["workers"].items()}
    errors = {address: e for address, e in client.run(plugin_error).items() if e}
    for address, error in errors.items():
        console.print(f"no worker on {names.get(address, address)}: {error}", markup=False)
    if errors and len(errors) == len(names):
        raise PipelineError("no device could open its models: " + "; ".join(errors.values()))
    if errors:
        client.retire_workers(list(errors), close_workers=True)


def _raise_if_none_started(started: list, count: int) -> None:
    failed = failures(started)
    for line in failed:
        console.print(f"no worker on {line}", markup=False)
    if len(failed) == count:
        raise PipelineError("no device could start a caption worker: " + "; ".join(failed))


def _wait_for_workers(client: Client, names: list[str]) -> None:
    """Until every started worker has joined the scheduler and set up its interrogator (bounded)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        joined = {w["name"] for w in client.scheduler_info()["workers"].values()}
        if set(names) <= joined:
            return
        time.sleep(0.2)
    missing = sorted(set(names) - joined)
    if len(missing) == len(names):
        raise PipelineError(
            f"no worker joined within {JOIN_TIMEOUT_S} s ({', '.join(missing)})",
            hint=f"see {WORKER.name}.log in each device's workdir; the devices must reach this machine's address",
        )
    console.print(f"going on without {', '.join(missing)}: its worker did not join within {JOIN_TIMEOUT_S} s")


def _start_worker(
    config: WithDevices, device: NamedDevice, port: int, security: Security, preload: tuple[str, ...]
) -> DeviceSettings:
    """A Dask worker on the device, in the background; returns where its plugin finds the device's models
    and NPU lock (paths as the device sees them)."""
    host = config.host(device.host)
    with connect(device.host, host) as transport:
        models = transport.path(device.models_dir)
        if not transport.run(f"test -f {quote(models)}/{CURRENT_SET}/export.json").ok:
            raise PipelineError(
                f"no fetched models in {models} on {device.name}", hint=f"run `invoke fetch --host {device.name}`"
            )
        _stop_running(transport)
        app, _ = install_runtime(transport, host.python)
        controller, own = _addresses(transport, host.kind == "local")
        tls = _put_certificates(transport, security)
        args = [
            f"tls://{controller}:{port}",
            "--name",
            device.name,
            "--nthreads",
            str(BATCHES_PER_DEVICE),
            "--no-nanny",
            "--resources",
            "NPU=1",
            "--death-timeout",
            "60",
            "--no-dashboard",
            "--dashboard-address",  # its HTTP server (health, metrics) runs even without the dashboard:
            "127.0.0.1:0",  # this device only, not every interface (the CLI's default)
            "--host",
            own,
            "--tls-ca-file",
            f"{tls}/{TLS_FILES[0]}",
            "--tls-cert",
            f"{tls}/{TLS_FILES[1]}",
            "--tls-key",
            f"{tls}/{TLS_FILES[2]}",
            *[arg for module in preload for arg in ("--preload", module)],
        ]
        pid = WORKER.start(transport, app, args)
        # A worker that cannot start (a model set it cannot open) exits at once: say so here, with its log.
        if not transport.run(f"sleep 1; kill -0 {pid}").ok:
            log = WORKER.log(transport)
            raise HostError(
                device.name, "the caption worker exited at start", hint=f"{log} ends:", tail=WORKER.log_tail(transport)
            )
    npu_lock = transport.path(device.npu_lock) if device.npu_lock else None
    return DeviceSettings(models, device.fidelity.value, npu_lock)


def _stop_worker(config: WithDevices, device: NamedDevice) -> None:
    with connect(device.host, config.host(device.host)) as transport:
        _stop_running(transport)


def _stop_running(transport: Transport) -> None:
    """Stop the worker an earlier run left (it would also leave on its own, 60 s after its scheduler)."""
    WORKER.stop(transport)
    _remove_certificates(transport)


def _remove_certificates(transport: Transport) -> None:
    """Our files in the TLS folder, then the folder if that left it empty: never anything else there."""
    tls = transport.path(TLS_DIR)
    files = " ".join(quote(f"{tls}/{name}") for name in TLS_FILES)
    transport.run(f"rm -f {files}; rmdir {quote(tls)} 2>/dev/null")


def _addresses(transport: Transport, local: bool) -> tuple[str, str]:
    """(this machine's address as the device sees it, the device's own on that link): from the SSH session
    (`SSH_CONNECTION`: client address, client port, server address, server port), so the worker reaches the
    scheduler the way SSH reached the device."""
    if local:
        return "127.0.0.1", "127.0.0.1"
    fields = transport.run("echo $SSH_CONNECTION").stdout.split()
    if len(fields) != 4:
        raise HostError(transport.name, "cannot tell this machine's address from the device (no SSH_CONNECTION)")
    client, server = fields[0], fields[2]
    return (f"[{client}]" if ":" in client else client), server


def _put_certificates(transport: Transport, security: Security) -> str:
    """The run's CA, certificate and key in a fresh 0700 folder on the device (the key never on a command
    line); a folder of that name the run did not make stops it rather than being emptied."""
    tls = transport.path(TLS_DIR)
    _remove_certificates(transport)
    transport.check(
        f"umask 077 && mkdir {quote(tls)}",
        what=f"making the TLS folder {tls}",
        hint="something else made a folder of that name there: move it away",
    )
    pem = (security.tls_ca_file, security.tls_worker_cert, security.tls_worker_key)
    put_private(transport, {name: text or "" for name, text in zip(TLS_FILES, pem, strict=True)}, tls)
    return tls


def _is_loopback(config: WithDevices, device: NamedDevice) -> bool:
    host = config.host(device.host)
    return host.kind == "local" or (host.address or "") in ("127.0.0.1", "localhost", "::1")


def _has_dashboard() -> bool:
    with contextlib.suppress(ImportError):
        import bokeh  # noqa: F401

        return True
    return False
