"""One pipeline run at a time per artifacts directory (an flock, released by the OS if we die), and only in
a directory of ours: the runner cleans `.tmp/` and swaps stage folders there, so a folder that already holds
files this pipeline did not make is refused, never cleaned.

Another pipeline's artifacts folder inside it is not foreign: README's preview writes `artifacts/local`,
inside the default pipeline's `artifacts/`, and both must work in either order. Such a folder is left
alone, unless it sits where this pipeline writes (a stage's folder, `reports`), which would replace it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import ConfigError, RunLockedError
from pipeline.files import OWNER_MARKER
from pipeline.records import StageRecords

RUN_LOCK_NAME = ".run.lock"
ROOT_FOLDERS = (".tmp", "reports", "cache")  # what the engine writes beside the stages' folders
# What an artifacts folder of an older release (before the marker) always holds: it is ours too.
_EARLIER_RELEASES = (RUN_LOCK_NAME, StageRecords.FILE)


def claim_artifacts(artifacts: Path, own_names: frozenset[str] = frozenset()) -> None:
    """Make the folder ours (new or empty), accept it when it is, refuse it when it holds foreign files.
    `own_names`: the folders this pipeline writes in it (its stages')."""
    if artifacts.exists() and not artifacts.is_dir():
        raise ConfigError(f"artifacts: {artifacts} is a file, not a folder", hint="set artifacts: to a folder")
    nested = _other_pipelines(artifacts)
    clash = sorted(nested & (own_names | set(ROOT_FOLDERS)))
    if clash:
        raise ConfigError(
            f"artifacts: {artifacts / clash[0]} is another pipeline's artifacts folder, where this pipeline "
            f"writes its {clash[0]} outputs",
            hint="give one of the two pipelines another artifacts: folder",
        )
    marker = artifacts / OWNER_MARKER
    if marker.is_file():
        return
    artifacts.mkdir(parents=True, exist_ok=True)
    found = sorted(p.name for p in artifacts.iterdir() if p.name not in nested)
    if found and not any((artifacts / name).exists() for name in _EARLIER_RELEASES):
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(
            f"artifacts: {artifacts} already holds files this pipeline did not make ({shown}); it is left as it is",
            hint="set artifacts: to a new or empty folder",
        )
    marker.write_text("made by this pipeline: its stages' outputs, lock file and reports\n", encoding="utf-8")


def _other_pipelines(artifacts: Path) -> set[str]:
    """The folders in `artifacts` that are artifacts folders of other pipelines (they carry the marker)."""
    if not artifacts.is_dir():
        return set()
    return {p.name for p in artifacts.iterdir() if p.is_dir() and not p.is_symlink() and (p / OWNER_MARKER).is_file()}


@contextmanager
def run_lock(artifacts: Path, own_names: frozenset[str] = frozenset()) -> Iterator[None]:
    claim_artifacts(artifacts, own_names)
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
