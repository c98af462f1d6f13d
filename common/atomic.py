"""Writing a file so that a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path, binary: bool = False, sync: bool = True) -> Iterator[IO[Any]]:
    """A handle on a temp file beside `path`, renamed over it when the block ends (removed if the block
    raises). The file gets the mode a plain write would have (0666 less the umask), not mkstemp's 0600:
    what we write is for reading. `sync`: fsync before the rename, so a power cut too leaves the old file or
    the new; without it (a caption per image of a large set) a crash of the process still does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, sync: bool = True) -> None:
    with atomic_file(path, sync=sync) as handle:
        handle.write(text)
