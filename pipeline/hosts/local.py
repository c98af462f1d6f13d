"""The local host: the same interface over subprocess and file copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from pipeline.errors import HostError
from pipeline.hosts.base import CommandResult, LineHandler, Progress, Transport


class LocalTransport(Transport):
    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.workdir = str(Path(os.path.expanduser(workdir)).resolve())
        Path(self.workdir).mkdir(parents=True, exist_ok=True)

    def run(self, command: str, *, timeout: float | None = None, on_line: LineHandler | None = None) -> CommandResult:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
        for thread in threads:
            thread.join()
        return CommandResult(command, exit_code, "".join(chunks["stdout"]), "".join(chunks["stderr"]))

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
