"""Embeddings of labels a caller asked about (POST /clip/v1/classify, `invoke classify`), kept so a label
costs one text encode on the NPU, ever: an LRU bounded by count and bytes, saved to one file that a
restart reads back.

The file is keyed by the text encoder's sha256 (rows of another encoder would score nonsense without
failing) and lives beside the model set: in fetch's own folder (`<models>/clip-axera/label-cache/`) when
the set is a fetched one, else in the user's cache folder (an export folder is the pipeline's output, and a
file added there would make its stage look changed). The cache is only a cache: a file that cannot be
read is reported once and replaced, never a reason to refuse a request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_file
from runtime.manifest import OWN_FOLDER

log = logging.getLogger(__name__)

CACHE_FOLDER = "label-cache"


@dataclass(frozen=True)
class CacheSettings:
    entries: int = 20_000  # labels kept
    bytes: int = 64 * 1024 * 1024  # their rows (float16) and texts (UTF-8) together
    folder: Path | None = None  # None: beside the model set (cache_file)


def cache_file(set_dir: Path, text_model_sha256: str, folder: Path | None = None) -> Path:
    """Where the cache of the set in `set_dir` (resolved, as ClipRuntime holds it) is kept: in `folder`
    when one is given."""
    if folder is None and set_dir.parent.parent.name == OWN_FOLDER:  # <models>/clip-axera/sets/<id>
        folder = set_dir.parent.parent / CACHE_FOLDER
    elif folder is None:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clip-axera" / CACHE_FOLDER
    return folder / f"{text_model_sha256[:32]}.npz"


class LabelCache:
    """text (template applied) -> its unit-length float16 embedding, least recently used dropped first."""

    def __init__(self, file: Path | None, text_model_sha256: str, dim: int, bounds: CacheSettings) -> None:
        self.file, self.key, self.dim, self.bounds = file, text_model_sha256, dim, bounds
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._unsaved = False
        if file is not None:
            self._load(file)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def health(self) -> dict[str, object]:
        """What /healthz shows of it."""
        return {"entries": len(self), "bytes": self._bytes, "file": str(self.file) if self.file else None}

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            row = self._rows.get(text)
            if row is not None:
                self._rows.move_to_end(text)
            return row

    def put(self, text: str, row: np.ndarray) -> None:
        row = np.asarray(row, dtype=np.float16)
        with self._lock:
            if text in self._rows:
                self._bytes -= _cost(text, self._rows.pop(text))
            self._rows[text] = row
            self._bytes += _cost(text, row)
            while self._rows and (len(self._rows) > self.bounds.entries or self._bytes > self.bounds.bytes):
                dropped, old = self._rows.popitem(last=False)
                self._bytes -= _cost(dropped, old)
            self._unsaved = True

    def save(self) -> None:
        """Written whole to a temporary file, then renamed over the old one: a reader (or a crash) sees
        the old cache or the new, never half of one. A disk that refuses costs the persistence, not the
        answer."""
        if self.file is None or not self._unsaved:
            return
        with self._save_lock:
            with self._lock:
                texts, rows, self._unsaved = list(self._rows), list(self._rows.values()), False
            header = json.dumps({"text_model_sha256": self.key, "dim": self.dim, "texts": texts}).encode()
            matrix = np.stack(rows) if rows else np.zeros((0, self.dim), np.float16)
            try:
                with atomic_file(self.file, binary=True, sync=False) as handle:
                    np.savez(handle, header=np.frombuffer(header, np.uint8), rows=matrix)
            except OSError as exc:
                log.warning("label cache not saved to %s: %s", self.file, exc)

    def _load(self, file: Path) -> None:
        if not file.is_file():
            return
        try:
            if file.stat().st_size > 2 * self.bounds.bytes + 1024 * 1024:
                raise ValueError(f"{file.stat().st_size:,} bytes, over twice the cache's bound")
            with np.load(file, allow_pickle=False) as data:
                header = json.loads(data["header"].tobytes())
                rows = np.asarray(data["rows"], dtype=np.float16)
            if header.get("text_model_sha256") != self.key or rows.shape != (len(header["texts"]), self.dim):
                raise ValueError("made for another text encoder or another shape")
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("label cache %s not used (%s); it is replaced by the next one saved", file, exc)
            return
        for text, row in zip(header["texts"], rows, strict=True):
            self.put(str(text), row)
        self._unsaved = False


def _cost(text: str, row: np.ndarray) -> int:
    return row.nbytes + len(text.encode("utf-8"))
