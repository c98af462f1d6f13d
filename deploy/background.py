"""A program of the device runtime kept running in the background on a host (the server, a fleet's Dask
worker): started from the runtime's folder and detached from the SSH session (setsid: its own session, so
the session's end sends it no SIGHUP), its pid and log in the host's workdir (`<name>.pid`, `<name>.log`,
the previous start's log kept as `<name>.log.1`), so that any controller finds and stops it later.

A pid file outlives a reboot, and the pid it names may then belong to any process: a pid counts as ours
only while that process's command line is the one we started (`<venv python> -m <module>`), and nothing
else is ever signalled. And files only the host's user may read (credentials, a TLS key), which never
pass through a command line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.device_runtime import venv_python
from pipeline.hosts import Transport
from pipeline.hosts.base import quote

STOP_TIMEOUT_S = 15  # after SIGTERM, then SIGKILL


@dataclass(frozen=True)
class Background:
    name: str
    module: str  # what runs: `<venv python> -m <module> <args>`
    environment: tuple[tuple[str, str], ...] = ()  # set for it alone (through `env`, which any shell has)

    @property
    def pid_name(self) -> str:
        return f"{self.name}.pid"

    def log(self, transport: Transport) -> str:
        return transport.path(f"{self.name}.log")

    def pid_file(self, transport: Transport) -> str:
        return transport.path(self.pid_name)

    def command_line(self, transport: Transport) -> str:
        """The start of our process's command line as `ps -o args=` shows it."""
        return f"{venv_python(transport)} -m {self.module}"

    def start(self, transport: Transport, app: str, args: list[str]) -> int:
        """`<venv python> -m module args` in `app`, detached; returns its pid. The last start's log is kept
        as `.log.1`, so the log holds one start and never grows across restarts."""
        log, pid_file = quote(self.log(transport)), quote(self.pid_file(transport))
        env = "".join(f"{name}={quote(value)} " for name, value in self.environment)
        command = f"{'env ' + env if env else ''}{quote(venv_python(transport))} -m {self.module}"
        result = transport.check(
            f"cd {quote(app)} && if [ -f {log} ]; then mv -f {log} {log}.1; fi; "
            "S=; if command -v setsid >/dev/null 2>&1; then S=setsid; fi; "
            f"$S nohup {command} {' '.join(quote(a) for a in args)}"
            f" > {log} 2>&1 < /dev/null & "
            f"echo $! > {pid_file}; cat {pid_file}",
            what=f"starting {self.name}",
        )
        return int(result.stdout.split()[-1])

    def running_pid(self, transport: Transport) -> int | None:
        """The pid in the pid file while that process lives and is ours (see the module's docstring)."""
        pid = transport.run(f"cat {quote(self.pid_file(transport))} 2>/dev/null").stdout.strip()
        if not pid.isdigit():
            return None
        args = transport.run(f"ps -ww -o args= -p {pid}").stdout.strip()  # -ww: never cut at a width
        return int(pid) if args.startswith(self.command_line(transport)) else None

    def stop(self, transport: Transport) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S, to our process only; the pid it stopped, None when
        none of ours ran. The pid file goes either way (a stale one names no process of ours)."""
        pid = self.running_pid(transport)
        if pid is not None:
            transport.run(
                f"kill {pid}; i=0; while [ $i -lt {STOP_TIMEOUT_S * 10} ] && kill -0 {pid} 2>/dev/null; do "
                f"sleep 0.1; i=$((i + 1)); done; kill -0 {pid} 2>/dev/null && kill -9 {pid}"
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
