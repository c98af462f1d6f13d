"""Pulsar2 in Docker on a build host: preflight, upload, `docker run ... pulsar2 build`, download.

Docker is a command line built for the host, not a transport: everything goes through the host's
Transport, so `--host local` and `--host mac` run the very same commands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import HostConfig
from pipeline.errors import HostError
from pipeline.hosts.base import Transport, quote
from pipeline.hosts.sync import TransferSummary, download, upload
from toolchains.compile_params import CompileParams
from toolchains.encoder_specs import EncoderSpec
from toolchains.precision_table import PrecisionTable, find_precision_table
from toolchains.pulsar2_config import pulsar2_build_args, pulsar2_config, remote_paths

log = logging.getLogger(__name__)

# A non-interactive SSH session on macOS often has neither of these in PATH.
DOCKER_FALLBACKS = (
    "/usr/local/bin/docker",
    "/opt/homebrew/bin/docker",
    "/Applications/Docker.app/Contents/Resources/bin/docker",
)
CONTAINER_PREFIX = "clip-axera-"
BUILD_LABEL = "clip-axera.build"  # names the build (its workdir on the build host) a container belongs to
OOM_EXIT = 137  # SIGKILL: the kernel's OOM killer inside Docker's VM
# Where `pulsar2 build` saves the precision table under its work_dir (= output_dir by default), as its log
# says: "save precision analysis table to [output/quant/debug/precision_analysis_table.txt]".
PRECISION_FILE = "quant/debug/precision_analysis_table.txt"


@dataclass(frozen=True)
class BuildHost:
    docker: str
    platform: str | None


@dataclass(frozen=True)
class BuildResult:
    encoder: str
    axmodel: Path
    sha256: str
    log: Path
    precision_table: Path | None
    precision: PrecisionTable | None
    precision_source: str  # the saved table file, or the build log when there is none


def preflight(transport: Transport, host: HostConfig, params: CompileParams) -> BuildHost:
    """Docker found and running, the image loaded, enough disk: each with its own clear error."""
    docker = _find_docker(transport, host)
    image = params.pulsar2.image
    inspect = transport.run(f"{quote(docker)} image inspect --format '{{{{.Architecture}}}}' {quote(image)}")
    if not inspect.ok:
        text = (inspect.stdout + inspect.stderr).lower()
        if "cannot connect" in text or ("daemon" in text and "running" in text):
            raise HostError(transport.name, "Docker is installed but not running", hint="start Docker Desktop")
        raise HostError(
            transport.name,
            f"docker image {image} is not loaded",
            hint="on the build host: docker load -i ax_pulsar2_<version>.tar.gz (then `docker images`), "
            "or set stages.compile.pulsar2.image to the loaded tag",
            tail=inspect.tail(5),
        )
    platform = params.pulsar2.platform
    machine = transport.check("uname -m", what="reading the CPU architecture").stdout.strip()
    if platform is None and machine in ("arm64", "aarch64") and inspect.stdout.strip() == "amd64":
        platform = "linux/amd64"
        log.warning("%s is %s: the amd64 Pulsar2 image runs emulated, expect a slow build", transport.name, machine)
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
    return BuildHost(docker=docker, platform=platform)


def _find_docker(transport: Transport, host: HostConfig) -> str:
    if host.docker:
        if not transport.run(f"test -x {quote(host.docker)}").ok:
            raise HostError(
                transport.name,
                f"docker binary {host.docker} not found or not executable",
                hint=f"fix hosts.{transport.name}.docker",
            )
        return host.docker
    candidates = " ".join(quote(p) for p in DOCKER_FALLBACKS)
    found = (
        transport.run(f'command -v docker || for p in {candidates}; do if [ -x "$p" ]; then echo "$p"; break; fi; done')
        .stdout.strip()
        .splitlines()
    )
    if not found:
        raise HostError(
            transport.name,
            "docker not found (looked in PATH and " + ", ".join(DOCKER_FALLBACKS) + ")",
            hint=f"install Docker Desktop, or set hosts.{transport.name}.docker to the docker binary",
        )
    return found[0]


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
    build_host: BuildHost,
    spec: EncoderSpec,
    params: CompileParams,
    out_dir: Path,
    echo: Callable[[str], None],
) -> BuildResult:
    """Run one `pulsar2 build` in a fresh container, streaming its log; download what it made."""
    paths = remote_paths(spec)
    _clear_build_dir(transport, build_host, params, paths["output_dir"])
    container = f"{container_prefix(transport)}{spec.name}-{uuid.uuid4().hex[:8]}"
    command = _docker_run(transport, build_host, params, pulsar2_build_args(spec, params), container)
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        echo(f"[{transport.name} {spec.name}] {line}")

    try:
        result = transport.run(command, on_line=on_line)
    except BaseException:  # Ctrl+C or a lost connection: the container must not build on unattended
        _stop(transport, build_host, [container])
        raise
    log_path = out_dir / f"{spec.name}.build.log"
    log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if result.exit_code == OOM_EXIT:
        raise HostError(
            transport.name,
            f"pulsar2 build of {spec.name} was killed (exit 137): most likely out of memory",
            hint="raise Docker Desktop's VM memory limit (Settings > Resources > Memory, 16 GB or more for U16 "
            "ViT builds), or close other containers; the previous .axmodel was kept",
            command=command,
            exit_code=result.exit_code,
            tail=lines[-20:],
        )
    if not result.ok:
        raise HostError(
            transport.name,
            f"pulsar2 build of {spec.name} failed (exit {result.exit_code})",
            hint=f"full log: {log_path}; the previous .axmodel was kept",
            command=command,
            exit_code=result.exit_code,
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


def _docker_run(
    transport: Transport, build_host: BuildHost, params: CompileParams, args: list[str], container: str | None = None
) -> str:
    docker = [build_host.docker, "run", "--rm"]
    if container:
        label = f"{BUILD_LABEL}={socket.gethostname()}:{transport.workdir}"
        docker += ["--name", container, "--label", label]
    if build_host.platform:
        docker += ["--platform", build_host.platform]
    docker += ["-v", f"{transport.workdir}:/data", "-w", "/data", params.pulsar2.image]
    return " ".join(quote(arg) for arg in docker + args)


def _clear_build_dir(transport: Transport, build_host: BuildHost, params: CompileParams, output_dir: str) -> None:
    """Remove the previous build's outputs. On a Linux build host the container wrote them as root, so
    the SSH user may not remove them: then the same image removes them, as root, inside the container."""
    if transport.run(f"rm -rf {quote(transport.path(output_dir))}").ok:
        return
    transport.check(
        _docker_run(transport, build_host, params, ["rm", "-rf", f"/data/{output_dir}"]),
        what=f"clearing the previous build's {output_dir} through docker (it was written as root)",
    )


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
    """Containers of builds in this workdir on the build host, whichever controller started them: another
    workdir's (another build, another user) never match."""
    return f"{CONTAINER_PREFIX}{hashlib.sha256(transport.workdir.encode()).hexdigest()[:10]}-"


def stop_stale_containers(transport: Transport, build_host: BuildHost, echo: Callable[[str], None]) -> None:
    """Stop containers of builds in this workdir that still run, left by a controller that was killed (we
    hold the workdir's lock, so no live build owns them). Other builds' containers are left alone."""
    prefix = container_prefix(transport)
    listed = transport.run(
        f"{quote(build_host.docker)} ps --filter name={prefix} --format '{{{{.Names}}}}'"
    ).stdout.split()
    stale = [name for name in listed if name.startswith(prefix)]
    if stale:
        echo(f"{transport.name}: stopping {len(stale)} container(s) left by an interrupted build: {', '.join(stale)}")
        _stop(transport, build_host, stale)


def _stop(transport: Transport, build_host: BuildHost, containers: list[str]) -> None:
    names = " ".join(quote(c) for c in containers)
    try:
        transport.run(f"{quote(build_host.docker)} stop -t 5 {names}", timeout=60)
    except HostError as exc:
        log.warning("%s: could not stop %s (%s); the next build stops it", transport.name, names, exc)
