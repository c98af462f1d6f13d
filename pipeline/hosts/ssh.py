"""SSH hosts through Fabric: the only module that imports fabric or paramiko.

Host keys are checked against ~/.ssh/known_hosts (and an optional extra file); an unknown host is
refused unless the host entry says `trust_new_host_key: true`. Fabric's own default, AutoAddPolicy,
would trust any key silently. Connection errors are retried with backoff; authentication and host-key
errors are not, since retrying cannot fix them.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from pathlib import Path

from fabric import Connection
from invoke.exceptions import CommandTimedOut
from paramiko import AutoAddPolicy, RejectPolicy
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from pipeline.config import HostConfig
from pipeline.errors import HostError
from pipeline.hosts import openssh
from pipeline.hosts.base import CommandResult, LineHandler, Progress, Transport, quote

log = logging.getLogger(__name__)
_CONNECTION_ERRORS = (NoValidConnectionsError, socket.timeout, TimeoutError, ConnectionError, EOFError, OSError)


class _LineWriter(io.TextIOBase):
    """A stream that hands each complete line to a callback (for live, prefixed build logs)."""

    def __init__(self, on_line: LineHandler) -> None:
        self._on_line = on_line
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._on_line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._on_line(self._pending)
            self._pending = ""


class SshTransport(Transport):
    def __init__(self, name: str, host: HostConfig, connection: Connection, workdir: str) -> None:
        self.name = name
        self.host = host
        self._conn = connection
        self.workdir = workdir
        self._stream = True  # until the system's ssh fails once

    @classmethod
    def connect(cls, name: str, host: HostConfig) -> SshTransport:
        connect_kwargs: dict[str, object] = {}
        if host.key:
            connect_kwargs["key_filename"] = [os.path.expanduser(host.key)]
        connection = Connection(
            host=host.address or "",
            user=host.user,
            port=host.port,
            connect_timeout=host.connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        client = connection.client
        if host.known_hosts:
            known = Path(os.path.expanduser(host.known_hosts))
            if known.is_file():
                client.load_host_keys(str(known))
        client.set_missing_host_key_policy(AutoAddPolicy() if host.trust_new_host_key else RejectPolicy())
        _open(name, host, connection)
        sftp = connection.sftp()
        home = sftp.normalize(".")
        workdir = host.workdir.replace("~", home, 1) if host.workdir.startswith("~") else host.workdir
        transport = cls(name, host, connection, workdir.rstrip("/") or "/")
        transport.check(f"mkdir -p {quote(transport.workdir)}", what=f"creating workdir {transport.workdir}")
        return transport

    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        streams: dict[str, object] = {}
        if on_line:
            streams = {"out_stream": _LineWriter(on_line), "err_stream": _LineWriter(on_line)}
        try:
            result = self._conn.run(
                command,
                hide=on_line is None,
                warn=True,
                in_stream=False,
                timeout=timeout or self.host.command_timeout,
                **streams,
            )
        except CommandTimedOut as exc:
            raise HostError(self.name, f"command timed out after {exc.timeout:.0f}s", command=command) from None
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise HostError(self.name, f"connection lost while running a command ({exc})", command=command) from exc
        finally:
            for stream in streams.values():
                stream.flush()  # type: ignore[attr-defined]
        return CommandResult(command, result.exited, result.stdout, result.stderr)

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        try:
            self._conn.sftp().put(str(local), remote, callback=progress)
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise HostError(self.name, f"upload of {local.name} to {remote} failed ({exc})") from exc

    def put_verified(self, local: Path, remote: str, progress: Progress | None = None) -> tuple[str, str]:
        """Through the system's ssh when there is one (scp's speed, both ends hashed on the fly);
        otherwise, or when it cannot connect the way Fabric did, SFTP and a hash on each end."""
        if self._stream and openssh.available():
            try:
                return openssh.stream_put(self.host, local, remote, progress)
            except openssh.StreamFailed as exc:
                log.warning("%s: the ssh client could not stream %s (%s); using SFTP", self.name, local.name, exc)
                self._stream = False
        return super().put_verified(local, remote, progress)

    def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        try:
            self._conn.sftp().get(remote, str(local), callback=progress)
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise HostError(self.name, f"download of {remote} failed ({exc})") from exc

    def close(self) -> None:
        self._conn.close()


def _open(name: str, host: HostConfig, connection: Connection) -> None:
    where = host.describe()
    delay = 1.0
    for attempt in range(host.retries + 1):
        try:
            connection.open()
            return
        except AuthenticationException as exc:
            raise HostError(
                name,
                f"authentication failed for {where} ({exc})",
                hint=f"check hosts.{name}.user and key; the public key must be in the host's ~/.ssh/authorized_keys",
            ) from None
        except BadHostKeyException:
            raise HostError(
                name,
                f"the host key of {where} does not match known_hosts: the host was reinstalled, or this is not it",
                hint="if the change is expected, remove the old key with ssh-keygen -R",
            ) from None
        except SSHException as exc:
            if "known_hosts" in str(exc):
                raise HostError(
                    name,
                    f"the host key of {where} is not in known_hosts",
                    hint=f"run `ssh {where}` once to check and save it, or set hosts.{name}.trust_new_host_key: true",
                ) from None
            reason = str(exc)
        except _CONNECTION_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
        if attempt < host.retries:
            log.warning("%s: cannot connect (%s); retrying in %.0fs", name, reason, delay)
            time.sleep(delay)
            delay *= 2
    raise HostError(
        name,
        f"cannot connect to {where}: {reason}",
        hint=f"tried {host.retries + 1} times; check the address and port, and that sshd runs there",
    )
