"""manifest.json: the model set fetch put on the device, file by file, and the compile report it came from.

fetch writes it last into a new versioned folder and then points the models link at that folder, so a
device always shows one complete set. The runtime reads it before loading anything and refuses a set
whose files are missing or differ from it (sizes always, sha256 when asked), naming `invoke fetch`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.contract import JsonFile
from common.errors import ModelFilesError
from common.hashing import sha256_file
from runtime.model_io import CompileReport

MANIFEST_FILE = "manifest.json"
# fetch's own folder inside the device's models dir (which may be the Stable Diffusion server's, shared), and
# in it the link to the set in use: `<models_dir>/clip-axera/current -> sets/<id>`.
OWN_FOLDER = "clip-axera"
CURRENT_SET = f"{OWN_FOLDER}/current"
FORMAT = 2  # 1: files held only sha256 (no sizes)


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest(JsonFile, file=MANIFEST_FILE, made_by="invoke fetch"):
    files: dict[str, FileEntry]  # device-side name (relative to the set folder) -> what must be there
    compile: CompileReport  # what compile made: target, and per encoder stem the file and its figures
    format: Literal[2] = FORMAT  # 1 held only sha256 (no sizes): read as another version, fetched again

    @property
    def set_id(self) -> str:
        """Names the set's folder: the same files give the same id, so a repeated fetch changes nothing."""
        listing = json.dumps({name: entry.sha256 for name, entry in sorted(self.files.items())})
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def problems(self, models_dir: Path, hashes: bool = False) -> list[str]:
        """What differs between the folder and this manifest: missing files, other sizes (and sha256)."""
        found = []
        for name, entry in sorted(self.files.items()):
            path = Path(models_dir) / name
            try:
                size = path.stat().st_size
            except OSError:
                found.append(f"{name} is missing")
                continue
            if size != entry.size:
                found.append(f"{name} is {size:,} bytes, the manifest says {entry.size:,}")
            elif hashes and sha256_file(path) != entry.sha256:
                found.append(f"{name} differs from the manifest (sha256)")
        return found

    def verify(self, models_dir: Path, hashes: bool = False) -> None:
        """Raise ModelFilesError unless every file is there as the manifest lists it."""
        problems = self.problems(models_dir, hashes)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ModelFilesError(
                f"{models_dir} does not hold the model set its manifest.json lists: {shown}. "
                "Run `invoke fetch` to put the complete set back"
            )


def model_set(models_dir: Path) -> Path:
    """The folder to load from: `models_dir` itself when it holds a model set (an export folder, or a set
    given directly), else the set fetch put in it; resolved once, so a later switch cannot mix two sets."""
    models_dir = Path(models_dir)
    fetched = models_dir / CURRENT_SET
    return (fetched if fetched.is_dir() and not (models_dir / MANIFEST_FILE).is_file() else models_dir).resolve()
