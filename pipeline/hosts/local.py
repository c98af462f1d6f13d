"""The local host: the same interface over subprocess and file copies."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO

from pipeline.errors import HostError
from pipeline.hosts.base import Background, CommandResult, LineHandler, Progress, Transport, shell_argv
from pipeline.hosts.relay import Pipe

TAIL_BYTES = 4096  # of a piped command's stderr, for error messages


class LocalTransport(Transport):
    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.home = os.path.expanduser("~")
        self.workdir = str(Path(os.path.expanduser(workdir)).resolve())
        Path(self.workdir).mkdir(parents=True, exist_ok=True)

    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        process = subprocess.Popen(
            shell_argv(command), cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def pump(stream: object, key: str) -> None:
            for line in stream:  # type: ignore[attr-defined]
                chunks[key].append(line)
                if on_line:
                    on_line(line.rstrip("\n"))

        threads = [
            threading.Thread(target=pump, args=(process.stdout, "stdout"), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, "stderr"), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            exit_code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise HostError(self.name, f"command timed out after {timeout:.0f}s", command=command) from None
        except BaseException:  # Ctrl+C: the command must not outlive us
            process.kill()
            raise
        for thread in threads:
            thread.join()
        return CommandResult(command, exit_code, "".join(chunks["stdout"]), "".join(chunks["stderr"]))

    def start(self, command: str) -> Background:
        process = subprocess.Popen(
            shell_argv(command), cwd=self.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return _LocalBackground(process)

    def open_pipe(self, command: str) -> Pipe:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the pipe when the run ends
        process = subprocess.Popen(
            shell_argv(command), cwd=self.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        return _ProcessPipe(process, stderr)

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)
        if progress:
            size = local.stat().st_size
            progress(size, size)

    def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        shutil.copyfile(remote, local)
        if progress:
            size = local.stat().st_size
            progress(size, size)


class _LocalBackground(Background):
    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process

    def readline(self, timeout: float) -> str:
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        return self._process.stdout.readline().rstrip("\n") if ready else ""

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()


class _ProcessPipe:
    def __init__(self, process: subprocess.Popen, stderr: IO[bytes]) -> None:
        self._process = process
        self._stderr = stderr

    def write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(data)
        self._process.stdin.flush()

    def read(self, size: int) -> bytes:
        assert self._process.stdout is not None
        return self._process.stdout.read1(size)  # type: ignore[attr-defined]

    def end_input(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()

    def close(self) -> str:
        self._process.kill()
        self._process.wait()
        with self._stderr:
            self._stderr.seek(0)
            return self._stderr.read(TAIL_BYTES).decode(errors="replace")
