"""Things made once per test run and shared by every pytest-xdist worker (a built pipeline, the stand-in
image's rootfs, a device venv): the first worker to ask makes it under a file lock, the others wait for
it and reuse it. Without xdist it is an ordinary session-scoped folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def run_root(factory: pytest.TempPathFactory) -> Path:
    """The base temp folder every worker of this run shares (a worker's own is a child of it)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """`run_root/name`, filled by make(folder) the first time any worker asks; a failed make leaves no
    folder behind, so the next ask tries again (and fails with its own message)."""
    root = run_root(factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                make(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


def hardlinked_copy(source: Path, target: Path) -> Path:
    """A copy of a tree whose files are hard links (instant, no space): for trees a test reads or adds
    to, never rewrites in place (a venv: pip writes new files and replaces, it does not edit)."""
    shutil.copytree(source, target, symlinks=True, copy_function=os.link)
    return target
