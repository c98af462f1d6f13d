"""The transport interface every host implements: run a command, put and get files."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import HostError

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


class Transport(ABC):
    """A connected host. `workdir` is absolute on that host; paths given to put/get are host paths."""

    name: str
    workdir: str

    @abstractmethod
    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        """Run a shell command; never raises on a non-zero exit (see `check`)."""

    @abstractmethod
    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None: ...

    @abstractmethod
    def get(self, remote: str, local: Path, progress: Progress | None = None) -> None: ...

    def close(self) -> None:
        return None

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

    def path(self, *parts: str) -> str:
        """A path below the workdir (absolute parts are kept as they are)."""
        joined = "/".join(p.strip("/") for p in parts if p)
        return parts[0] if len(parts) == 1 and parts[0].startswith("/") else f"{self.workdir}/{joined}"

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quote(value: str) -> str:
    return shlex.quote(value)
