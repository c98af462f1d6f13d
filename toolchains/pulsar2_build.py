"""Pulsar2 in Docker on a build host: preflight, upload, one container per `pulsar2 build`, download.

Files travel over the host's transport (its workdir, mounted at /data as Axera's quick start does); the
containers run on the host's Docker Engine through the SDK (docker_engine.py), so `--host local` and
`--host mac` run the very same calls. Each build container carries labels naming the controller, the
workdir and the encoder: a leftover of an interrupted build in this workdir is found by them, and another
build's container (another workdir on a shared engine) is never touched.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.errors import ImageNotFound
from docker.models.containers import Container
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from pipeline.errors import HostError
from pipeline.hosts.base import Transport, quote
from pipeline.hosts.sync import TransferSummary, download, upload
from pipeline.terminal import console
from runtime.model_io import Toolchain
from toolchains import docker_desktop
from toolchains.compile_params import CompileParams
from toolchains.docker_engine import ENGINE_ERRORS, BuildHostConfig, Engine, first_line
from toolchains.encoder_specs import EncoderSpec
from toolchains.precision_table import PrecisionTable, find_precision_table
from toolchains.pulsar2_config import pulsar2_build_args, pulsar2_config, remote_paths

log = logging.getLogger(__name__)

CONTAINER_PREFIX = "clip-axera-"
LABEL = "clip-axera"  # labels: clip-axera.workdir, clip-axera.controller, clip-axera.encoder
DATA = "/data"  # where the workdir is mounted, as in Axera's quick start (`-v $PWD:/data`)
OOM_EXIT = 137  # SIGKILL, which is what the kernel's OOM killer sends
STOP_TIMEOUT_S = 5
LOAD_CHUNK = 1024 * 1024
# Where `pulsar2 build` saves the precision table under its work_dir (= output_dir by default), as its log
# says: "save precision analysis table to [output/quant/debug/precision_analysis_table.txt]".
PRECISION_FILE = "quant/debug/precision_analysis_table.txt"


@dataclass(frozen=True)
class BuildEnvironment:
    """What preflight settled: the engine, the image by id, how containers run there."""

    engine: Engine
    image: str
    image_id: str
    platform: str | None
    owner: str | None  # uid:gid that outputs are handed back to (a Linux engine's containers write as root)
    timeout_s: float  # the longest a build may run: the host's command_timeout

    @property
    def toolchain(self) -> Toolchain:
        facts = self.engine.facts
        return Toolchain(self.image, self.image_id, facts.version, facts.os)


@dataclass(frozen=True)
class BuildResult:
    encoder: str
    axmodel: Path
    sha256: str
    log: Path
    precision_table: Path | None
    precision: PrecisionTable | None
    precision_source: str  # the saved table file, or the build log when there is none


def preflight(transport: Transport, engine: Engine, host: BuildHostConfig, params: CompileParams) -> BuildEnvironment:
    """Enough memory in the engine, the image there (loaded from the archive when named), enough disk:
    each with its own clear error, before anything is uploaded."""
    pulsar2, facts = params.pulsar2, engine.facts
    docker_desktop.check_memory(transport, facts.memory_gb, pulsar2.min_memory_gb, facts.is_desktop)
    if facts.is_desktop:
        docker_desktop.check_shared(transport, transport.workdir)
    image = _image(transport, engine, params)
    platform = pulsar2.platform
    image_arch = str(image.attrs.get("Architecture", ""))
    if platform is None and facts.arch in ("arm64", "aarch64") and image_arch == "amd64":
        platform = "linux/amd64"
        log.warning("%s is %s: the amd64 Pulsar2 image runs emulated, expect a slow build", transport.name, facts.arch)
    _check_disk(transport, host)
    owner = _owner(transport, engine)
    return BuildEnvironment(engine, pulsar2.image, str(image.id), platform, owner, host.command_timeout)


def image_id(engine: Engine, image: str) -> str | None:
    """The id of the image a tag names now; None when the engine has no such image."""
    try:
        return str(engine.client.images.get(image).id)
    except ImageNotFound:
        return None


def _image(transport: Transport, engine: Engine, params: CompileParams) -> Any:
    pulsar2 = params.pulsar2
    try:
        return engine.client.images.get(pulsar2.image)
    except ImageNotFound:
        if pulsar2.image_archive is None:
            raise HostError(
                transport.name,
                f"docker image {pulsar2.image} is not loaded",
                hint="on the build host: docker load -i ax_pulsar2_<version>.tar.gz (then `docker images`); or "
                "set stages.compile.pulsar2.image_archive to that file here, and compile loads it; or set "
                "stages.compile.pulsar2.image to the loaded tag",
            ) from None
    loaded = _load(engine, pulsar2.image_archive)
    try:
        return engine.client.images.get(pulsar2.image)
    except ImageNotFound:
        raise HostError(
            transport.name,
            f"{pulsar2.image_archive.name} holds {', '.join(loaded) or 'no tagged image'}, not {pulsar2.image}",
            hint="set stages.compile.pulsar2.image to the tag it loaded",
        ) from None


def _load(engine: Engine, archive: Path) -> list[str]:
    """`docker load` of an archive on this machine, streamed to the engine with a progress bar."""
    size = archive.stat().st_size
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console) as bar, archive.open("rb") as handle:
        task = bar.add_task(f"docker load {archive.name}", total=size)

        def chunks() -> Iterator[bytes]:
            while data := handle.read(LOAD_CHUNK):
                bar.advance(task, len(data))
                yield data

        images = engine.client.images.load(chunks())
    return [tag for image in images for tag in image.tags]


def _check_disk(transport: Transport, host: BuildHostConfig) -> None:
    free_kb = transport.check(
        f"df -Pk {quote(transport.workdir)} | tail -1 | awk '{{print $4}}'", what="reading free disk space"
    ).stdout.strip()
    free_gb = int(free_kb or 0) / 1024 / 1024
    if free_gb < host.min_free_gb:
        raise HostError(
            transport.name,
            f"only {free_gb:.1f} GB free in {transport.workdir}, need {host.min_free_gb:g} GB",
            hint=f"free disk space on the build host, or lower hosts.{transport.name}.min_free_gb",
        )


def _owner(transport: Transport, engine: Engine) -> str | None:
    """The SSH user's uid:gid on a Linux engine, whose containers write as root; None where outputs come
    out as the user's anyway (Docker Desktop shares folders as the user, and so does root)."""
    if engine.facts.is_desktop:
        return None
    ids = transport.check("id -u; id -g", what="reading the user's uid and gid").stdout.split()
    return None if ids[:1] == ["0"] else ":".join(ids[:2])


def write_configs(specs: list[EncoderSpec], params: CompileParams, out_dir: Path) -> dict[str, Path]:
    paths = {}
    for spec in specs:
        path = out_dir / f"{spec.name}.pulsar2.json"
        path.write_text(json.dumps(pulsar2_config(spec, params), indent=2) + "\n", encoding="utf-8")
        paths[spec.name] = path
    return paths


def upload_inputs(transport: Transport, specs: list[EncoderSpec], configs: dict[str, Path]) -> TransferSummary:
    files: dict[Path, str] = {}
    for spec in specs:
        paths = remote_paths(spec)
        files[spec.onnx] = transport.path(paths["onnx"])
        files[spec.calibration] = transport.path(paths["calibration"])
        files[configs[spec.name]] = transport.path(paths["config"])
    return upload(transport, files)


def build(
    transport: Transport,
    env: BuildEnvironment,
    spec: EncoderSpec,
    params: CompileParams,
    out_dir: Path,
    echo: Callable[[str], None],
) -> BuildResult:
    """Run one `pulsar2 build` in a fresh container, streaming its log; download what it made."""
    paths = remote_paths(spec)
    _clear_build_dir(transport, env, paths["output_dir"])
    args = pulsar2_build_args(spec, params)
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        echo(f"[{transport.name} {spec.name}] {line}")

    exit_code, oom = _run_build(transport, env, spec.name, args, params, on_line)
    if env.owner:
        _run_as_root(transport, env, ["chown", "-R", env.owner, f"{DATA}/{paths['output_dir']}"])
    log_path = out_dir / f"{spec.name}.build.log"
    log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if oom or exit_code == OOM_EXIT:
        raise _killed(transport, env, spec, params, exit_code, oom, lines)
    if exit_code != 0:
        raise HostError(
            transport.name,
            f"pulsar2 build of {spec.name} failed (exit {exit_code})",
            hint=f"full log: {log_path}; the previous .axmodel was kept",
            command=" ".join(args),
            exit_code=exit_code,
            tail=lines[-20:],
        )
    axmodel = out_dir / paths["output_name"]
    digest = download(transport, transport.path(f"{paths['output_dir']}/{paths['output_name']}"), axmodel)
    if not params.pulsar2.precision_analysis:
        return BuildResult(spec.name, axmodel, digest, log_path, None, None, "")
    table_path = out_dir / f"{spec.name}.precision.txt"
    precision, source = _read_precision(transport, f"{paths['output_dir']}/{PRECISION_FILE}", lines, table_path)
    if precision is None:
        raise HostError(
            transport.name,
            f"pulsar2 build of {spec.name} printed no precision table, so its accuracy cannot be checked",
            hint=f"look for 'Quant Precision Table' in {log_path}; set stages.compile.pulsar2.precision_analysis "
            "false to build without the check",
        )
    table_path.write_text(precision.text + "\n", encoding="utf-8")
    return BuildResult(spec.name, axmodel, digest, log_path, table_path, precision, source)


def _run_build(
    transport: Transport,
    env: BuildEnvironment,
    encoder: str,
    args: list[str],
    params: CompileParams,
    on_line: Callable[[str], None],
) -> tuple[int, bool]:
    """The container's exit code and whether the kernel killed it for memory. The container is removed
    whatever happens: on Ctrl+C or a lost connection it is stopped first, not left to build unattended;
    past the host's command_timeout it is stopped, which ends its log stream, and the build fails."""
    limit = params.pulsar2.memory_limit_gb
    container = _start(
        transport,
        env,
        args,
        name=f"{container_prefix(transport)}{encoder}-{uuid.uuid4().hex[:8]}",
        labels={**build_labels(transport), f"{LABEL}.encoder": encoder},
        mem_limit=f"{int(limit * 1024)}m" if limit else None,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(ENGINE_ERRORS):
            container.stop(timeout=STOP_TIMEOUT_S)

    deadline = threading.Timer(env.timeout_s, expire)
    deadline.daemon = True
    deadline.start()
    try:
        for line in _lines(container.logs(stream=True, follow=True)):
            on_line(line)
        exit_code = int(container.wait()["StatusCode"])
        container.reload()
        if expired.is_set():
            raise HostError(
                transport.name,
                f"pulsar2 build of {encoder} did not end within {env.timeout_s:g} s and was stopped",
                hint=f"raise hosts.{transport.name}.command_timeout for a slow build host; the previous .axmodel "
                "was kept",
            )
        return exit_code, bool(container.attrs["State"].get("OOMKilled"))
    except BaseException:
        _stop(transport, [container])
        raise
    finally:
        deadline.cancel()
        with contextlib.suppress(ENGINE_ERRORS):
            container.remove(force=True)


def _start(transport: Transport, env: BuildEnvironment, command: list[str], **options: Any) -> Container:
    try:
        return env.engine.client.containers.run(
            env.image_id,
            command,
            detach=True,
            working_dir=DATA,
            volumes={transport.workdir: {"bind": DATA, "mode": "rw"}},
            platform=env.platform,
            **options,
        )
    except ENGINE_ERRORS as exc:
        hint = ""
        if "mounts denied" in str(exc).lower():  # Docker Desktop: the workdir is not a shared folder
            hint = f"add {transport.workdir} in {docker_desktop.FILE_SHARING_FIX}, or use a workdir under /Users"
        raise HostError(
            transport.name, f"Docker could not start a container of {env.image}: {first_line(exc)}", hint=hint
        ) from None


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Log lines from the byte chunks Docker streams (a UTF-8 character may be split between two)."""
    decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        yield from (line.rstrip("\r") for line in complete)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending.rstrip("\r")


def _killed(
    transport: Transport,
    env: BuildEnvironment,
    spec: EncoderSpec,
    params: CompileParams,
    exit_code: int,
    oom: bool,
    lines: list[str],
) -> HostError:
    limit = params.pulsar2.memory_limit_gb
    memory = (
        f"{limit:g} GB (stages.compile.pulsar2.memory_limit_gb)" if limit else f"{env.engine.facts.memory_gb:.1f} GB"
    )
    what = "ran out of memory (Docker says OOMKilled)" if oom else f"was killed (exit {exit_code})"
    return HostError(
        transport.name,
        f"pulsar2 build of {spec.name} {what}; the container had {memory}",
        hint="give Docker more memory (Docker Desktop > Settings > Resources > Memory, 16 GB or more for U16 ViT "
        "builds), raise or drop memory_limit_gb, or close other containers; the previous .axmodel was kept",
        exit_code=exit_code,
        tail=lines[-20:],
    )


def _clear_build_dir(transport: Transport, env: BuildEnvironment, output_dir: str) -> None:
    """Remove the previous build's outputs. What a root container wrote before outputs were handed back
    may not be the SSH user's to remove: then a container removes it, as root."""
    if not transport.run(f"rm -rf {quote(transport.path(output_dir))}").ok:
        _run_as_root(transport, env, ["rm", "-rf", f"{DATA}/{output_dir}"])


def _run_as_root(transport: Transport, env: BuildEnvironment, command: list[str]) -> None:
    container = _start(transport, env, command, user="0:0", labels=build_labels(transport))
    try:
        exit_code = int(container.wait()["StatusCode"])
        if exit_code != 0:
            said = container.logs().decode(errors="replace").strip().splitlines()
            raise HostError(
                transport.name, f"`{' '.join(command)}` in a container failed (exit {exit_code})", tail=said
            )
    finally:
        with contextlib.suppress(ENGINE_ERRORS):
            container.remove(force=True)


def _read_precision(
    transport: Transport, remote_table: str, lines: list[str], local: Path
) -> tuple[PrecisionTable | None, str]:
    """The saved precision_analysis_table.txt (wide, never wrapped) when pulsar2 wrote one, else the log."""
    remote = transport.path(remote_table)
    if transport.run(f"test -f {quote(remote)}").ok:
        download(transport, remote, local)
        table = find_precision_table(local.read_text(encoding="utf-8"))
        if table is not None:
            return table, remote_table
    return find_precision_table("\n".join(lines)), "build log"


def container_prefix(transport: Transport) -> str:
    """A readable name prefix for this workdir's containers (`docker ps` shows it); labels identify them."""
    return f"{CONTAINER_PREFIX}{hashlib.sha256(transport.workdir.encode()).hexdigest()[:10]}-"


def build_labels(transport: Transport) -> dict[str, str]:
    return {f"{LABEL}.workdir": transport.workdir, f"{LABEL}.controller": socket.gethostname()}


def stop_stale_containers(transport: Transport, env: BuildEnvironment, echo: Callable[[str], None]) -> None:
    """Remove containers of builds in this workdir left by a controller that was killed (we hold the
    workdir's lock, so no live build owns them), running or exited. Other builds' are left alone."""
    found = env.engine.client.containers.list(all=True, filters={"label": f"{LABEL}.workdir={transport.workdir}"})
    if found:
        names = ", ".join(c.name for c in found)
        echo(f"{transport.name}: removing {len(found)} container(s) left by an interrupted build: {names}")
        _stop(transport, found)


def _stop(transport: Transport, containers: list[Container]) -> None:
    for container in containers:
        try:
            container.stop(timeout=STOP_TIMEOUT_S)
            container.remove(force=True)
        except ENGINE_ERRORS as exc:
            log.warning("%s: could not remove %s (%s); the next build does", transport.name, container.name, exc)
