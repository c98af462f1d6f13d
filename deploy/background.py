"""A program of the device runtime kept running in the background on a host (the server, a fleet's Dask
worker): started from the runtime's folder and detached from the SSH session, its pid and log in the
host's workdir (`<name>.pid`, `<name>.log`), so that any controller finds and stops it later. And files
only the host's user may read (credentials, a TLS key), which never pass through a command line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.hosts import Transport
from pipeline.hosts.base import quote

STOP_TIMEOUT_S = 15  # after SIGTERM, then SIGKILL


@dataclass(frozen=True)
class Background:
    name: str

    @property
    def pid_name(self) -> str:
        return f"{self.name}.pid"

    def log(self, transport: Transport) -> str:
        return transport.path(f"{self.name}.log")

    def pid_file(self, transport: Transport) -> str:
        return transport.path(self.pid_name)

    def start(self, transport: Transport, app: str, python: str, module: str, args: list[str]) -> int:
        """`python -m module args` in `app`, detached (setsid where there is one); returns its pid."""
        log, pid_file = quote(self.log(transport)), quote(self.pid_file(transport))
        result = transport.check(
            f"cd {quote(app)} && (command -v setsid >/dev/null && S=setsid || S=); "
            f"$S nohup {quote(python)} -m {module} {' '.join(quote(a) for a in args)} > {log} 2>&1 < /dev/null & "
            f"echo $! > {pid_file}; cat {pid_file}",
            what=f"starting {self.name}",
        )
        return int(result.stdout.split()[-1])

    def running_pid(self, transport: Transport) -> int | None:
        pid_file = quote(self.pid_file(transport))
        out = transport.run(f"test -f {pid_file} && kill -0 $(cat {pid_file}) 2>/dev/null && cat {pid_file}").stdout
        return int(out.strip()) if out.strip().isdigit() else None

    def stop(self, transport: Transport) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the pid it stopped, None when none ran."""
        pid = self.running_pid(transport)
        if pid is not None:
            transport.run(
                f"kill {pid}; for i in $(seq {STOP_TIMEOUT_S * 10}); do kill -0 {pid} 2>/dev/null || break; "
                f"sleep 0.1; done; kill -0 {pid} 2>/dev/null && kill -9 {pid}"
            )
        transport.run(f"rm -f {quote(self.pid_file(transport))}")
        return pid

    def log_tail(self, transport: Transport, lines: int = 20) -> list[str]:
        return transport.run(f"tail -n {lines} {quote(self.log(transport))}").stdout.strip().splitlines()


def put_private(transport: Transport, files: dict[str, str], folder: str) -> None:
    """Each text as a 0600 file in `folder` on the host, a folder the caller made 0700: never on a command
    line, where `ps` would show it, and never readable by others, not even for a moment."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            local = Path(tmp) / name
            local.touch(mode=0o600)
            local.write_text(text, encoding="utf-8")
            transport.put(local, f"{folder}/{name}")
    transport.check(
        " && ".join(f"chmod 600 {quote(f'{folder}/{name}')}" for name in files), what="making the files private"
    )
