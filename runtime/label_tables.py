"""Precomputed label embeddings: what lets the device rank 100,000 labels without a text-encoder pass.

On disk (written by embed-vocab): `vocab.json` (categories, their settings, labels and hashes) and one
`<category>.npy` per category, float16 [labels, dim], L2-normalized. In memory every category sits in
one float32 matrix, so ranking an image against all of them is one matrix-vector product.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelFilesError

INDEX_FILE = "vocab.json"


@dataclass(frozen=True)
class CategoryTable:
    name: str
    mode: str  # one | many | top
    labels: tuple[str, ...]
    threshold: float
    k: int
    prefix: str
    tags: bool
    start: int  # rows [start, start + len(labels)) of the joint matrix

    @property
    def stop(self) -> int:
        return self.start + len(self.labels)


class LabelTables:
    def __init__(self, categories: list[CategoryTable], matrix: np.ndarray, index: dict[str, Any]) -> None:
        self.categories = categories
        self.matrix = matrix  # float32 [total labels, dim], rows L2-normalized
        self.index = index

    @classmethod
    def load(cls, directory: Path) -> LabelTables:
        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise ModelFilesError(f"{index_path} not found: run `invoke embed-vocab` and `invoke fetch`")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        categories, blocks, start = [], [], 0
        for entry in index["categories"]:
            block = np.load(directory / entry["file"], mmap_mode="r")
            if block.shape[0] != len(entry["labels"]):
                raise ModelFilesError(f"{entry['file']}: {block.shape[0]} rows for {len(entry['labels'])} labels")
            categories.append(
                CategoryTable(
                    name=entry["name"],
                    mode=entry["mode"],
                    labels=tuple(entry["labels"]),
                    threshold=float(entry["threshold"]),
                    k=int(entry["k"]),
                    prefix=entry.get("prefix", ""),
                    tags=bool(entry.get("tags", False)),
                    start=start,
                )
            )
            blocks.append(block)
            start += block.shape[0]
        matrix = np.empty((start, int(index["dim"])), dtype=np.float32)
        row = 0
        for block in blocks:
            matrix[row : row + block.shape[0]] = block
            row += block.shape[0]
        return cls(categories, matrix, index)

    @property
    def sizes(self) -> dict[str, int]:
        return {c.name: len(c.labels) for c in self.categories}

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """Cosine of the (normalized) image embedding with every label: one matrix-vector product."""
        vector = np.asarray(embedding, dtype=np.float32).ravel()
        vector = vector / (np.linalg.norm(vector) + 1e-12)
        return self.matrix @ vector


def write_category(directory: Path, name: str, embeddings: np.ndarray) -> str:
    """Save one category's normalized embeddings as float16; returns the file name for the index."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12
    file = f"{name}.npy"
    np.save(directory / file, (embeddings / norms).astype(np.float16))
    return file
