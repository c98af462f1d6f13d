"""One pipeline run at a time per artifacts directory (an flock, released by the OS if we die)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import RunLockedError

RUN_LOCK_NAME = ".run.lock"


@contextmanager
def run_lock(artifacts: Path) -> Iterator[None]:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / RUN_LOCK_NAME
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"another pipeline run (pid {holder}) is using {artifacts}",
                hint="wait for it to finish, or stop it; the lock frees itself when that process exits",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
