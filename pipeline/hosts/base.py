"""The transport interface every host implements: run a command, pipe bytes through one, put and get files."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.hashing import sha256_file
from pipeline.errors import HostError
from pipeline.hosts.relay import Pipe, Relay, relay_socket

# OpenSSL's sha256 where there is one (twice coreutils' speed on CPUs without SHA instructions), else
# sha256sum (Linux) or shasum (macOS). Each prints "<sha256> <space or *><path>".
SHA_TOOL = (
    "$(if command -v openssl >/dev/null 2>&1; then echo 'openssl dgst -sha256 -r'; "
    "elif command -v sha256sum >/dev/null 2>&1; then echo sha256sum; else echo 'shasum -a 256'; fi)"
)
SHA_COMMAND = f'H={SHA_TOOL}; for f in {{files}}; do if [ -f "$f" ]; then $H "$f"; fi; done'
# wc -c takes a regular file's size from stat (GNU and BSD alike); printf keeps names with spaces whole
SIZE_COMMAND = 'for f in {files}; do if [ -f "$f" ]; then printf "%s\\t%s\\n" "$(wc -c < "$f")" "$f"; fi; done'

# The shell every command is written for. zsh, macOS's login shell since 10.15, does not split `$VAR` into
# words and fails a glob that matches nothing (`no matches found`); sh does neither. Build-host commands
# use only what macOS's /bin/sh (bash 3.2 in POSIX mode) and BSD userland offer: sh, cat, ls, mkdir, mv,
# rm, test, wc, tr, df, tee, uname, kill, openssl or shasum; devices add python3 (Debian's).
POSIX_SHELL = "sh"

LineHandler = Callable[[str], None]
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
TAIL_LINES = 20


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        return (self.stdout + self.stderr).strip().splitlines()[-lines:]


class Background(ABC):
    """A command left running on a host: its output read line by line, its stdin closed to end it."""

    @abstractmethod
    def readline(self, timeout: float) -> str:
        """The next line of stdout without its newline; "" at end of output or after `timeout` seconds."""

    @abstractmethod
    def close(self) -> None:
        """Close its stdin (the command sees end of input) and let go of it."""


class Transport(ABC):
    """A connected host. `workdir` is absolute on that host; paths given to put/get are host paths."""

    name: str
    workdir: str

    @abstractmethod
    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        """Run a shell command; never raises on a non-zero exit (see `check`)."""

    @abstractmethod
    def start(self, command: str) -> Background:
        """Start a command that runs while this side keeps its stdin open (see remote_lock.py)."""

    @abstractmethod
    def open_pipe(self, command: str) -> Pipe:
        """Start a command with its stdin and stdout as a byte pipe (see relay.py)."""

    def relay(self, command: str) -> AbstractContextManager[Relay]:
        """A Unix socket here; each connection to it runs `command` on the host, piped both ways."""
        return relay_socket(lambda: self.open_pipe(command))

    @abstractmethod
    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None: ...

    @abstractmethod
    def get(self, remote: str, local: Path, progress: Progress | None = None) -> None: ...

    retries = 0  # how often a transfer is tried again after the connection broke

    def reconnect(self) -> None:  # noqa: B027 - a local host has nothing to reconnect
        """Make a fresh connection after a ConnectionLost."""

    def close(self) -> None:
        return None

    def put_verified(self, local: Path, remote: str, progress: Progress | None = None) -> tuple[str, str]:
        """Put a file; returns (sha256 of the local file, sha256 of what arrived, computed on the host).
        Transports that can hash both ends while the bytes flow override this."""
        self.put(local, remote, progress)
        return sha256_file(local), self.sha256([remote]).get(remote, "missing")

    def sha256(self, paths: Iterable[str]) -> dict[str, str]:
        """sha256 of each existing file on the host, in one command; missing files are absent."""
        return self._per_file(SHA_COMMAND, paths, "computing checksums", _digest_line)

    def sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """Size in bytes of each existing file on the host (symlinks followed), in one command; missing
        files are absent. Cheap: no file is read."""
        return self._per_file(SIZE_COMMAND, paths, "listing file sizes", _size_line)

    def _per_file(self, command: str, paths: Iterable[str], what: str, parse: Callable[[str], Any]) -> dict[str, Any]:
        """One command over every path; each output line parsed to (path, value), or None to skip it."""
        paths = list(paths)
        if not paths:
            return {}
        result = self.check(command.format(files=" ".join(quote(p) for p in paths)), what=what)
        return dict(found for line in result.stdout.splitlines() if (found := parse(line)) is not None)

    def check(self, command: str, *, what: str, hint: str = "", timeout: float | None = None) -> CommandResult:
        """Run and raise a HostError naming `what` failed, with the output tail, on a non-zero exit."""
        result = self.run(command, timeout=timeout)
        if not result.ok:
            raise HostError(
                self.name,
                f"{what} failed (exit {result.exit_code})",
                hint=hint,
                command=command,
                exit_code=result.exit_code,
                tail=result.tail(),
            )
        return result

    home = "~"  # the host user's home folder, found when connecting

    def expand(self, path: str) -> str:
        """A host path setting with a leading `~` (`~/x`) made absolute on the host's side."""
        if path == "~" or path.startswith("~/"):
            return self.home.rstrip("/") + path[1:]
        return path

    def path(self, *parts: str) -> str:
        """A path below the workdir; a single absolute or `~` part is kept as it is, `~` expanded."""
        if len(parts) == 1 and self.expand(parts[0]).startswith("/"):
            return self.expand(parts[0])
        joined = "/".join(p.strip("/") for p in parts if p)
        return f"{self.workdir}/{joined}"

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _digest_line(line: str) -> tuple[str, str] | None:
    """`<sha256>  <path>` (or ` *` for binary mode) as sha256sum and openssl print it."""
    digest, separator, path = line[:64], line[64:66], line[66:]
    ok = separator in ("  ", " *") and all(c in "0123456789abcdef" for c in digest)
    return (path, digest) if ok else None


def _size_line(line: str) -> tuple[str, int] | None:
    """`<size>\t<path>` as SIZE_COMMAND prints it (wc pads the size with spaces on BSD)."""
    size, separator, path = line.partition("\t")
    return (path, int(size)) if separator and size.strip().isdigit() else None


def quote(value: str) -> str:
    return shlex.quote(value)


def shell_argv(command: str) -> list[str]:
    """How every command runs on every host: POSIX sh parses it, never the user's login shell."""
    return [POSIX_SHELL, "-c", command]


def over_ssh(command: str) -> str:
    """The string sent to sshd, which hands it to the user's login shell as `<shell> -c <string>`: quoted
    once for that shell (zsh, bash, fish all read single quotes alike), so only sh parses the command."""
    return shlex.join(shell_argv(command))
