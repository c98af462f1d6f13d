"""The build host's Docker Engine through the docker SDK, here or on an SSH host.

Here: the socket the host entry names, else DOCKER_HOST, else the usual sockets (Linux's, then Docker
Desktop's on a Mac). On an SSH host: the docker CLI's own way to reach its engine over SSH, `docker system
dial-stdio`, run through the host's existing connection (pipeline/hosts/relay.py): the CLI finds its
engine as it would for the user (its context, Docker Desktop's socket), or the socket the entry names.
Every API call then goes through the SDK; no docker command line is built.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.errors import DockerException
from docker.transport import UnixHTTPAdapter
from pydantic import Field

from pipeline.config import HostConfig
from pipeline.errors import HostError
from pipeline.hosts.base import Transport, quote
from toolchains import docker_desktop

# Linux's engine, then Docker Desktop's own socket on a Mac (the first exists only when Desktop's
# "Allow the default Docker socket" setting is on).
LOCAL_SOCKETS = ("/var/run/docker.sock", "~/.docker/run/docker.sock")
# A non-interactive SSH session on macOS often has none of these in PATH.
DOCKER_FALLBACKS = (
    "/usr/local/bin/docker",
    "/opt/homebrew/bin/docker",
    "/Applications/Docker.app/Contents/Resources/bin/docker",
    "~/Applications/Docker.app/Contents/Resources/bin/docker",  # Docker.app installed for one user
)
API_TIMEOUT_S = 120  # one API call; a build's log stream and wait have none
# Connections kept open to the engine. Over SSH each is a session channel, and sshd allows 10 per
# connection (MaxSessions) for everything the transport runs too (docker-py#2246); the SDK keeps a pool
# per request URL, 25 of them, each holding a connection: both numbers stay small here.
POOLS, POOL_SIZE = 2, 1
DOCKER_SCHEME = "http+docker://"  # the SDK's requests mount for a local socket
GB = 1024**3
# What a call to the engine raises: the SDK's errors, and the HTTP client's when the connection breaks.
ENGINE_ERRORS = (DockerException, requests.exceptions.RequestException)


class BuildHostConfig(HostConfig):
    """A host as a build host: how its Docker Engine is reached, and the disk a build needs there."""

    docker: str | None = None  # its docker CLI (over SSH); found on PATH or in the usual macOS places when unset
    docker_socket: str | None = None  # its engine's socket, when not the one the CLI (or DOCKER_HOST here) uses
    min_free_gb: float = Field(5.0, ge=0, le=1_000_000)


@dataclass(frozen=True)
class EngineFacts:
    """What the engine says about itself: checked before anything is uploaded, recorded with the build."""

    version: str
    os: str  # "Docker Desktop", "Debian GNU/Linux 12 (bookworm)" ...
    arch: str  # the engine's, in Go's words (amd64, arm64)
    memory_bytes: int
    cpus: int

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GB

    @property
    def is_desktop(self) -> bool:
        return "desktop" in self.os.lower()


@dataclass(frozen=True)
class Engine:
    client: docker.DockerClient
    facts: EngineFacts


@contextlib.contextmanager
def open_engine(transport: Transport, host: BuildHostConfig) -> Iterator[Engine]:
    """The host's engine, connected and asked for its facts; closed after the block. An engine error in
    the block (a refused request, a connection that broke) ends as one HostError."""
    with contextlib.ExitStack() as stack:
        url, problems = _local_url(host), []
        if host.kind != "local":
            relay = stack.enter_context(transport.relay(_dial_stdio(transport, host)))
            url, problems = f"unix://{relay.path}", relay.problems
        engine = _connected(transport, url, problems)
        stack.callback(engine.client.close)
        try:
            yield engine
        except ENGINE_ERRORS as exc:
            said = f": {problems[-1]}" if problems else ""
            raise HostError(transport.name, f"Docker's engine failed a request ({first_line(exc)}){said}") from None


def _connected(transport: Transport, url: str | None, problems: list[str]) -> Engine:
    try:
        client = docker.from_env(timeout=API_TIMEOUT_S) if url is None else _client(url)
        version, info = client.version(), client.info()
    except ENGINE_ERRORS as exc:
        said = f": {problems[-1]}" if problems else ""
        raise HostError(
            transport.name,
            f"Docker's engine is not reachable ({first_line(exc)}){said}",
            hint=docker_desktop.unreachable_hint(transport),
        ) from None
    facts = EngineFacts(
        version=str(version.get("Version", "?")),
        os=str(info.get("OperatingSystem", "?")),
        arch=str(version.get("Arch", "?")),
        memory_bytes=int(info.get("MemTotal", 0)),
        cpus=int(info.get("NCPU", 0)),
    )
    return Engine(client, facts)


def _client(url: str) -> docker.DockerClient:
    """A client keeping few connections. docker-py 7.1 passes `num_pools` to a unix socket's adapter only
    for ssh:// URLs (`num_pools or SSH_DEFAULT if ssh else DEFAULT` in APIClient), so its adapter is
    replaced by one built with the numbers. The API version is the engine's own: Docker Engine 29 refuses
    versions below 1.44, Debian's 20.10 serves up to 1.41."""
    client = docker.DockerClient(url, timeout=API_TIMEOUT_S)  # asks the engine for its API version
    client.api.adapters[DOCKER_SCHEME].close()  # and the connection that asked
    socket_url = url.replace("unix://", "http+unix://", 1)
    adapter = UnixHTTPAdapter(socket_url, API_TIMEOUT_S, pool_connections=POOLS, max_pool_size=POOL_SIZE)
    client.api.mount(DOCKER_SCHEME, adapter)
    return client


def _local_url(host: BuildHostConfig) -> str | None:
    """The engine socket on this machine; None: the SDK's own default (DOCKER_HOST and friends)."""
    if host.docker_socket:
        return f"unix://{os.path.expanduser(host.docker_socket)}"
    if os.environ.get("DOCKER_HOST"):
        return None
    found = next((p for p in map(os.path.expanduser, LOCAL_SOCKETS) if Path(p).exists()), LOCAL_SOCKETS[0])
    return f"unix://{found}"


def _dial_stdio(transport: Transport, host: BuildHostConfig) -> str:
    """The command that connects its stdin and stdout to the build host's engine."""
    command = f"{quote(_docker_cli(transport, host))} system dial-stdio"
    if not host.docker_socket:
        return command
    return f"DOCKER_HOST={quote('unix://' + transport.expand(host.docker_socket))} {command}"


def _docker_cli(transport: Transport, host: BuildHostConfig) -> str:
    if host.docker:
        docker_cli = transport.expand(host.docker)
        if not transport.run(f"test -x {quote(docker_cli)}").ok:
            raise HostError(
                transport.name,
                f"docker CLI {docker_cli} not found or not executable",
                hint=f"fix hosts.{transport.name}.docker",
            )
        return docker_cli
    candidates = " ".join(quote(transport.expand(p)) for p in DOCKER_FALLBACKS)
    found = transport.run(
        f'command -v docker || for p in {candidates}; do if [ -x "$p" ]; then echo "$p"; break; fi; done'
    ).stdout.split()
    if not found:
        raise HostError(
            transport.name,
            "the docker CLI is not there (looked in PATH and " + ", ".join(DOCKER_FALLBACKS) + ")",
            hint=f"install Docker Desktop (or Docker Engine), or set hosts.{transport.name}.docker to the CLI",
        )
    return found[0]


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
