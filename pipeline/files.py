"""File helpers used everywhere: sha256 with a size+mtime shortcut, directory swaps, the ownership marker.

The shortcut is doit's and DVC's: a file whose size and mtime match the recorded ones is taken to have
the recorded hash, so a no-op run over gigabytes of artifacts costs one stat per file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.hashing import sha256_file

# Marks a folder (an artifacts folder, a device's model sets) as made by this pipeline: only such a folder is
# ever cleaned, swapped or pruned; one without it may hold the user's files.
OWNER_MARKER = ".made-by-this-pipeline"


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    sha256: str


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def file_state(path: Path, known: FileState | None = None) -> FileState:
    """The file's state, reusing `known.sha256` when size and mtime are unchanged."""
    stat = path.stat()
    if known is not None and known.size == stat.st_size and known.mtime_ns == stat.st_mtime_ns:
        return known
    return FileState(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256_file(path))


def list_files(root: Path) -> list[Path]:
    """A file itself, or every file below a directory (sorted, hidden temp files excluded)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def swap_in_dir(new: Path, final: Path) -> None:
    """Replace directory `final` by `new`; the old one is kept as `<final>.old` until the new one is in.

    A crash between the two renames leaves `<final>.old`, which `recover_swapped_dir` puts back.
    """
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old)


def recover_swapped_dir(final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        os.replace(old, final)
    elif old.exists():
        shutil.rmtree(old)
