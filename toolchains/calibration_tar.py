"""Calibration archives in the layout Pulsar2's `calibration_format: Numpy` reads: a tar of .npy files,
each one sample shaped exactly like the model input; and calibration.json, which lists them by input.

Archives are byte-for-byte reproducible (fixed order, mtime, owner), so an unchanged calibration set
leaves every downstream stage up to date.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.contract import JsonFile
from common.errors import ModelFilesError


@dataclass(frozen=True)
class Archive:
    file: str  # beside calibration.json
    shape: tuple[int, ...]  # of every sample
    dtype: str
    sources: tuple[str, ...]  # the image file or prompt of each sample, in the archive's order


@dataclass(frozen=True)
class CalibrationSet(JsonFile, file="calibration.json", made_by="invoke calibrate"):
    """What calibrate made, read by the toolchains: one archive per model input (by its name)."""

    archives: dict[str, Archive]

    def archive(self, input_name: str) -> Archive:
        if input_name not in self.archives:
            raise ModelFilesError(f"{self.FILE} has no calibration set for {input_name}: run `{self.MADE_BY}`")
        return self.archives[input_name]


def write_npy_tar(path: Path, samples: list[np.ndarray]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for index, sample in enumerate(samples):
            buffer = io.BytesIO()
            np.save(buffer, sample, allow_pickle=False)
            info = tarfile.TarInfo(f"{index:05d}.npy")
            info.size = buffer.tell()
            info.mtime = 0
            info.mode = 0o644
            buffer.seek(0)
            archive.addfile(info, buffer)


def read_npy_tar(path: Path) -> list[np.ndarray]:
    samples = []
    with tarfile.open(path, "r") as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.endswith(".npy"):
                handle = archive.extractfile(member)
                assert handle is not None
                samples.append(np.load(io.BytesIO(handle.read()), allow_pickle=False))
    return samples
