"""SSH hosts through Fabric: the only module that imports fabric or paramiko.

Host keys are checked against ~/.ssh/known_hosts (and an optional extra file); an unknown host is
refused unless the host entry says `trust_new_host_key: true`, and then its key is appended to the
known-hosts file in use (the extra file, else ~/.ssh/known_hosts), so a changed key is refused afterwards.
Fabric's own default, AutoAddPolicy, would trust any key silently and remember none. Connection errors are
retried with backoff; authentication and host-key errors are not, since retrying cannot fix them.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import os
import socket
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from fabric import Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut
from paramiko import Channel, MissingHostKeyPolicy, PKey, RejectPolicy, SSHClient
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from pipeline.config import HostConfig
from pipeline.errors import ConnectionLost, HostError
from pipeline.hosts import openssh
from pipeline.hosts.base import Background, CommandResult, LineHandler, Progress, Transport, over_ssh, quote
from pipeline.hosts.relay import Pipe

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 10
STDERR_KEPT = 4096  # of a piped command's stderr, for error messages
_CONNECTION_ERRORS = (NoValidConnectionsError, socket.timeout, TimeoutError, ConnectionError, EOFError, OSError)


class _IncrementalRemote(Remote):
    """Fabric's runner, decoding each stream incrementally: invoke decodes every 1000-byte chunk alone, so a
    UTF-8 character split across two chunks (rich's box lines in a build log) became two U+FFFD."""

    def read_proc_output(self, reader: Callable[[int], bytes]) -> Generator[str, None, None]:
        decoder = codecs.getincrementaldecoder(self.encoding)("replace")
        while data := reader(self.read_chunk_size):
            yield decoder.decode(data)
        if tail := decoder.decode(b"", final=True):
            yield tail


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
        """Nothing: invoke flushes after every chunk it writes, and a chunk may end mid-line."""

    def finish(self) -> None:
        """The last line, if the output did not end with a newline."""
        if self._pending:
            self._on_line(self._pending)
            self._pending = ""


class SshTransport(Transport):
    def __init__(self, name: str, host: HostConfig, connection: Connection, home: str) -> None:
        self.name = name
        self.host = host
        self._conn = connection
        self.home = home
        self.workdir = self.expand(host.workdir).rstrip("/") or "/"
        self._stream = True  # until the system's ssh fails once

    @property
    def retries(self) -> int:
        return self.host.retries

    @classmethod
    def connect(cls, name: str, host: HostConfig) -> SshTransport:
        connection = _connection(name, host)
        _open(name, host, connection)
        transport = cls(name, host, connection, connection.sftp().normalize("."))
        transport.check(f"mkdir -p {quote(transport.workdir)}", what=f"creating workdir {transport.workdir}")
        return transport

    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        streams: dict[str, object] = {}
        if on_line:
            streams = {"out_stream": _LineWriter(on_line), "err_stream": _LineWriter(on_line)}
        try:
            promise = self._conn.run(
                over_ssh(command),
                hide=on_line is None,
                warn=True,
                in_stream=False,
                timeout=timeout or self.host.command_timeout,
                asynchronous=True,
                **streams,
            )
            result = _finish(promise)
        except CommandTimedOut as exc:
            raise HostError(self.name, f"command timed out after {exc.timeout:.0f}s", command=command) from None
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise ConnectionLost(self.name, f"connection lost running a command ({exc})", command=command) from exc
        finally:
            for stream in streams.values():
                stream.finish()  # type: ignore[attr-defined]
        return CommandResult(command, result.exited, result.stdout, result.stderr)

    def start(self, command: str) -> Background:
        return _ChannelBackground(self._session(command))

    def open_pipe(self, command: str) -> Pipe:
        return _ChannelPipe(self._session(command))

    def _session(self, command: str) -> Channel:
        """A session channel running `command`, for callers that talk to it themselves."""
        try:
            channel = self._conn.client.get_transport().open_session()
            channel.exec_command(over_ssh(command))
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise ConnectionLost(self.name, f"connection lost starting a command ({exc})", command=command) from exc
        return channel

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        try:
            self._conn.sftp().put(str(local), remote, callback=progress)
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            if self._connected():  # the host refused the write (SFTP says only "Failure"): a full disk, mostly
                raise _write_failed(self.name, local.name, remote, exc) from exc
            raise ConnectionLost(self.name, f"connection lost during the upload of {local.name} ({exc})") from exc

    def _connected(self) -> bool:
        """Whether the host still answers: after a failed write, tells a refused write from a lost link."""
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            return False
        try:
            sftp = self._conn.sftp()
            sftp.get_channel().settimeout(PROBE_TIMEOUT_S)
            sftp.normalize(".")
            sftp.get_channel().settimeout(None)
            return True
        except (SSHException, *_CONNECTION_ERRORS):
            return False

    def put_verified(self, local: Path, remote: str, progress: Progress | None = None) -> tuple[str, str]:
        """Big files through the system's ssh when there is one (scp's speed, both ends hashed on the fly);
        small ones, or when ssh cannot connect the way Fabric did, over SFTP on the open connection."""
        if self._stream and local.stat().st_size >= openssh.STREAM_MIN_BYTES and openssh.available():
            try:
                return openssh.stream_put(self.host, local, remote, progress)
            except openssh.StreamFailed as exc:
                if "No space left" in str(exc):
                    raise _write_failed(self.name, local.name, remote, exc) from exc
                log.warning("%s: the ssh client could not stream %s (%s); using SFTP", self.name, local.name, exc)
                self._stream = False
        return super().put_verified(local, remote, progress)

    def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        try:
            self._conn.sftp().get(remote, str(local), callback=progress)
        except (SSHException, *_CONNECTION_ERRORS) as exc:
            raise ConnectionLost(self.name, f"connection lost during the download of {remote} ({exc})") from exc
        # Paramiko's prefetching reader can return a file of the right size whose tail never arrived when
        # the connection drops under it (a test saw a corrupted 3 MB copy, no exception): a download that
        # ends on a dead connection is a lost connection, tried again, not a corrupted file.
        if not self._connected():
            raise ConnectionLost(self.name, f"connection lost during the download of {remote}")

    def reconnect(self) -> None:
        """A fresh connection with the same checks, retried with backoff (a rebooting device)."""
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = _connection(self.name, self.host)
        _open(self.name, self.host, self._conn)

    def close(self) -> None:
        self._conn.close()


def _write_failed(host: str, name: str, remote: str, exc: Exception) -> HostError:
    parent = remote.rsplit("/", 1)[0] or "/"
    return HostError(
        host,
        f"the host could not write {name} to {parent} ({exc})",
        hint=f"check free space there (df -h {parent}); the previous files were kept",
    )


def _finish(promise: Any) -> Any:
    """Wait for a command here rather than in invoke, which on Ctrl+C without a pty would wait for the
    remote command to end on its own: we close the channel and let the interrupt through at once."""
    channel = promise.runner.channel
    try:
        while not channel.status_event.wait(0.2):
            if channel.closed:
                break
    except KeyboardInterrupt:
        channel.close()
        with contextlib.suppress(Exception):
            promise.join()
        raise
    return promise.join()


class _ChannelBackground(Background):
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._pending = b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ""
            self._channel.settimeout(remaining)
            try:
                data = self._channel.recv(4096)
            except TimeoutError:
                return ""
            if not data:
                break
            self._pending += data
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def close(self) -> None:
        try:
            self._channel.shutdown_write()
            self._channel.settimeout(30)
            self._channel.recv_exit_status()
        except (SSHException, *_CONNECTION_ERRORS):
            pass  # the connection is gone: so is the command's stdin
        finally:
            self._channel.close()


class _ChannelPipe:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        self._channel.sendall(data)

    def read(self, size: int) -> bytes:
        return self._channel.recv(size)

    def end_input(self) -> None:
        self._channel.shutdown_write()

    def close(self) -> str:
        stderr = b""
        with contextlib.suppress(SSHException, *_CONNECTION_ERRORS):
            while self._channel.recv_stderr_ready() and len(stderr) < STDERR_KEPT:
                stderr += self._channel.recv_stderr(STDERR_KEPT)
        self._channel.close()
        return stderr.decode(errors="replace")


class _RememberNewHostKey(MissingHostKeyPolicy):
    """Accept an unknown host's key and append it to `path` (made 0600 when new). Appending, unlike
    paramiko's save_host_keys, leaves the user's other lines (comments, @cert-authority) as they are."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            starts_clean = handle.tell() == 0 or self.path.read_bytes().endswith(b"\n")
            handle.write(("" if starts_clean else "\n") + f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("trusted the new host key of %s (%s) and saved it to %s", hostname, key.get_name(), self.path)


def _known_hosts(name: str, host: HostConfig) -> Path:
    """The known-hosts file this host's keys are checked against and new ones saved to."""
    if not host.known_hosts:
        return Path(os.path.expanduser("~/.ssh/known_hosts"))
    known = Path(os.path.expanduser(host.known_hosts))
    if not known.is_file():
        raise HostError(
            name,
            f"hosts.{name}.known_hosts: {known} does not exist",
            hint="fix the path, create the file (`touch` it, then set trust_new_host_key or run ssh once), "
            "or remove the key to use ~/.ssh/known_hosts",
        )
    return known


def resolved_address(host: HostConfig) -> str:
    """The address an ssh_config alias stands for (its HostName), as the connection resolves it; the
    address itself when ~/.ssh/config has no such Host."""
    return str(Connection(host=host.address or "").host)


def _connection(name: str, host: HostConfig) -> Connection:
    """A Fabric connection that checks host keys against known_hosts (Fabric's default trusts any)."""
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
    connection.config.runners.remote = _IncrementalRemote
    client = connection.client
    known = _known_hosts(name, host)
    client.load_system_host_keys()  # ~/.ssh/known_hosts, if any: Fabric itself loads no known hosts
    if host.known_hosts:
        client.load_host_keys(str(known))
    client.set_missing_host_key_policy(_RememberNewHostKey(known) if host.trust_new_host_key else RejectPolicy())
    return connection


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
            reason = _banner_reason(str(exc))
        except socket.gaierror as exc:  # a name that does not resolve now will not resolve in a second
            raise HostError(
                name,
                f"cannot resolve {host.address!r}: {exc.strerror}",
                hint=f"check hosts.{name}.address (or its HostName in ~/.ssh/config)",
            ) from None
        except _CONNECTION_ERRORS as exc:
            # paramiko's NoValidConnectionsError reads "[Errno None] Unable to connect ...": the errno is noise
            reason = (str(exc) or type(exc).__name__).removeprefix("[Errno None] ")
        if attempt < host.retries:
            log.warning("%s: cannot connect (%s); retrying in %.0fs", name, reason, delay)
            time.sleep(delay)
            delay *= 2
    tries = host.retries + 1
    raise HostError(
        name,
        f"cannot connect to {where}: {reason}",
        hint=f"tried {tries} time{'s' if tries > 1 else ''}; check the address and port, and that sshd runs there",
    )


def _banner_reason(message: str) -> str:
    """paramiko glues its banner error to the cause ("...banner[Errno 104] ..."): say what it means."""
    if "protocol banner" not in message:
        return message
    cause = message.split("banner", 1)[1].strip(" :")
    return "the port answered but no SSH server spoke there (no SSH banner" + (f": {cause})" if cause else ")")
