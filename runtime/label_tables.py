"""Precomputed label embeddings: what lets the device rank 100,000 labels without a text-encoder pass.

On disk (written by embed-vocab): `vocab.json` (categories, their settings, labels and hashes), one
`<category>.npy` per category (float16 [labels, dim], L2-normalized) and `<category>.rank.onnx`, the same
rows in int8. Ranking is two passes: a category's int8 model scores its labels with one MatMulInteger (a
quarter of the memory traffic of float32, which is what a 100k-row matrix-vector product is bound by), then
the labels the coarse scores cannot rule out are rescored exactly from the float16 rows. A model per
category, run when a request reads that category: A1111's caption does not pay for clip-interrogator's
100,000 flavors (7 ms an image at ViT-B/32's width here, more than the NPU's encode). The coarse error is
bounded analytically (`coarse_error_bound`), so the final picks equal those of an exact float ranking.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import JsonFile
from common.errors import ModelFilesError
from runtime import model_io
from runtime.backends import DAMAGED_HINT, onnx_session

RANK_SUFFIX = ".rank.onnx"  # a category's coarse model: `<category>.rank.onnx`
# A category this big ranks on every core: its pass reads megabytes, and two threads halve its wall time at
# the same CPU (5.6 -> 3.0 ms for 100k labels); a smaller one runs on the caller's thread, where waking
# threads would cost more than they share.
PARALLEL_RANK_LABELS = 20_000
# RAM for float32 copies of the smallest categories' rows (the exact pass's; see LabelTables): the default
# vocabulary's caption categories take 4 MB; its 10k artists (22 MB) and 100k flavors stay mapped.
FLOAT32_ROWS_BYTES = 8 * 1024 * 1024


class CategoryMode(str, enum.Enum):
    """What a category contributes: `one` label (A1111's style), `many` (every label above its threshold:
    tags) or the `top` k (flavors)."""

    ONE = "one"
    MANY = "many"
    TOP = "top"


@dataclass(frozen=True)
class MergedLabel:
    label: str  # the spelling dropped
    into: str  # the kept one with the same token ids


@dataclass(frozen=True)
class LabelChanges:
    """What embed-vocab dropped or changed on the way from a category's file to its table: counts, and
    the first few by name."""

    read: int = 0
    empty_lines: int = 0
    comment_lines: int = 0
    exact_duplicates: int = 0
    cleaned: int = 0
    token_merges: int = 0
    merged: tuple[MergedLabel, ...] = ()
    truncated: int = 0
    truncated_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankModel:
    """A category's `<category>.rank.onnx`, the int8 copy of its rows, and the bounds on its error (see
    coarse_error_bound)."""

    file: str
    max_label_scale: float
    max_label_error_l2: float
    max_label_norm: float
    # Takes a batch of images, each quantized alone (symmetric, IMAGE_LEVELS); False: an earlier release's
    # model of one image, quantized with DynamicQuantizeLinear, which ImageSide no longer replays.
    batched: bool = False


@dataclass(frozen=True)
class CategoryEntry:
    """One category as embed-vocab stored it: its settings, its labels in row order, its `.npy` file."""

    name: str
    mode: CategoryMode
    file: str
    labels: tuple[str, ...]
    threshold: float = 0.2  # `many`, CLIP-like families: the cosine a label must reach
    min_probability: float = 0.1  # `many`, SigLIP: the sigmoid probability a label must reach
    k: int = 3
    template: str = "{}"
    prefix: str = ""
    tags: bool = False
    caption: bool = True  # in the A1111 caption (off: only the prompt modes use it)
    labels_sha256: str = ""
    stats: LabelChanges = field(default_factory=LabelChanges)
    rank: RankModel | None = None  # always written; None only in tables of a release before per-category ranks

    def prompt(self, label: str) -> str:
        return self.template.replace("{}", label)


@dataclass(frozen=True)
class TableModel:
    """The model whose text encoder made the rows: its family, how it pools, how it scores."""

    family: str
    pooling: model_io.Pooling
    scores: model_io.ScoreScale

    @classmethod
    def of(cls, info: model_io.ExportInfo) -> TableModel:
        return cls(info.facts.family, info.facts.text.pooling, info.facts.scores)


@dataclass(frozen=True)
class VocabIndex(JsonFile, file="vocab.json", made_by="invoke embed-vocab"):
    name: str
    dim: int
    categories: tuple[CategoryEntry, ...]
    text_model_sha256: str  # the text model the rows came from: embed-vocab reuses rows only for it
    model: TableModel

    def check_made_by(self, info: model_io.ExportInfo) -> None:
        """Rows from another model's text encoder rank nonsense without failing: refuse them."""
        if self.text_model_sha256 != info.text.sha256 or self.dim != info.projection_dim:
            raise ModelFilesError(
                f"the label tables were made by another model ({self.model.family}, text encoder "
                f"{self.text_model_sha256[:12]}) than the one loaded ({info.facts.family} {info.model}, text "
                f"encoder {info.text.sha256[:12]}): run `invoke embed-vocab` and `invoke fetch`"
            )


@dataclass(frozen=True, kw_only=True)
class CategoryTable(CategoryEntry):
    """A stored category with its rows loaded."""

    rows: np.ndarray = field(compare=False, repr=False)  # float16 [labels, dim], L2-normalized, memory-mapped


class LabelTables:
    """The tables of a vocabulary dir. The float16 rows stay memory-mapped: the exact pass reads only a
    few candidates per category, so a 100k-label vocabulary costs its int8 copy in RAM, not both. Small
    categories, whose labels the exact pass may read by the hundreds, keep a float32 copy in RAM as well
    (FLOAT32_ROWS_BYTES in all): numpy's float16 -> float32 conversion of the candidates cost ten times
    their dot products (608 against 57 us for 600 rows of 512)."""

    def __init__(self, categories: list[CategoryTable], index: VocabIndex, rankers: dict[str, Any]) -> None:
        self.categories = categories
        self.index = index
        self._rankers = rankers  # category -> onnxruntime session of its rank model
        self._float_rows = _float32_copies(categories, FLOAT32_ROWS_BYTES)  # category -> its rows as float32

    @classmethod
    def load(cls, directory: Path) -> LabelTables:
        index = VocabIndex.read(directory)
        categories, rankers = [], {}
        for entry in index.categories:
            if entry.rank is None or not entry.rank.batched:
                raise ModelFilesError(
                    f"{directory / VocabIndex.FILE}: tables of an earlier release (their rank models rank one "
                    "image at a time): run `invoke embed-vocab` (it reuses every label's row) and `invoke fetch`"
                )
            block = _rows(directory / entry.file)
            if block.dtype != np.float16:
                raise ModelFilesError(f"{entry.file}: {block.dtype} rows, not float16: run `invoke embed-vocab`")
            if block.shape[0] != len(entry.labels):
                raise ModelFilesError(f"{entry.file}: {block.shape[0]} rows for {len(entry.labels)} labels")
            categories.append(CategoryTable(**vars(entry), rows=block))
            threads = 0 if len(entry.labels) >= PARALLEL_RANK_LABELS else 1  # 0: onnxruntime's, one a core
            rankers[entry.name] = onnx_session(directory / entry.rank.file, threads)
        return cls(categories, index, rankers)

    def coarse_scores(
        self, category: CategoryTable, vectors: np.ndarray, images: list[ImageSide] | None = None
    ) -> list[tuple[np.ndarray, float]]:
        """int8 cosines of normalized vectors [images, dim] with a category's labels, in one pass over its
        8-bit rows, and for each image a bound on their error (`images`: the vectors' part of it, when the
        caller keeps it for the images' other categories)."""
        assert category.rank is not None  # load refuses tables without
        scores = self._rankers[category.name].run(None, {"embedding": np.asarray(vectors, dtype=np.float32)})[0]
        sides = images or [ImageSide.of(vector) for vector in vectors]
        return [(row, coarse_error_bound(side, category.rank)) for row, side in zip(scores, sides, strict=True)]

    def exact_scores(self, category: CategoryTable, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Float cosines of a normalized vector with some of a category's labels (indices within it): the
        same float32 rows, from the copy or converted here, so the same cosines either way."""
        copy = self._float_rows.get(category.name)
        chosen = copy[rows] if copy is not None else np.asarray(category.rows[rows], dtype=np.float32)
        return chosen @ vector


def _float32_copies(categories: list[CategoryTable], budget: int) -> dict[str, np.ndarray]:
    """Float32 copies of the smallest categories' rows, as many as fit in `budget` bytes."""
    copies: dict[str, np.ndarray] = {}
    for category in sorted(categories, key=lambda c: c.rows.size):
        if category.rows.size * 4 > budget:
            break
        copies[category.name] = np.asarray(category.rows, dtype=np.float32)
        budget -= category.rows.size * 4
    return copies


def _rows(path: Path) -> np.ndarray:
    """A label table, memory-mapped; a damaged header is one ModelFilesError."""
    try:  # a plain array over the mapping: np.memmap's own indexing costs more than a few rows' gather
        return np.asarray(np.load(path, mmap_mode="r"))
    except (OSError, ValueError, EOFError) as exc:
        raise ModelFilesError(f"{path}: not a readable label table ({exc}); {DAMAGED_HINT}") from exc


def normalize(embedding: np.ndarray) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32).ravel()
    return vector / (np.linalg.norm(vector) + 1e-12)


IMAGE_LEVELS = 127  # an image's values are quantized to -127..127 times its max |value| / 127


@dataclass(frozen=True)
class ImageSide:
    """The image's part of the error bound, the same for every category: its quantization error |x' - x|
    (the rank model's quantization replayed in numpy, in float32 as it computes) and its norm |x|."""

    error: float
    norm: float

    @classmethod
    def of(cls, vector: np.ndarray) -> ImageSide:
        vector = np.asarray(vector, dtype=np.float32)
        scale = np.maximum(np.abs(vector).max(), np.float32(1e-12)) / np.float32(IMAGE_LEVELS)
        replayed = np.clip(np.round(vector / scale), -IMAGE_LEVELS, IMAGE_LEVELS) * scale
        error = float(np.linalg.norm(replayed - vector)) + float(scale)  # + one step, for rounding ties
        return cls(error, float(np.linalg.norm(vector)))


def coarse_error_bound(image: ImageSide, rank: RankModel) -> float:
    """A bound on |coarse - exact| for every label of a category, by Cauchy-Schwarz on the two quantization
    errors: x'.w' - x.w = (x' - x).w' + x.(w' - w), so it is <= |x' - x| |w'| + |x| max|w' - w|. The image
    side is computed exactly (ImageSide), the label side at build time."""
    return image.error * rank.max_label_norm + image.norm * rank.max_label_error_l2 + 1e-5


NORMALIZE_ROWS = 65_536  # rows normalized at a time (in float32), so a big table never has a float32 copy


def normalized_rows(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length float16 rows, as the tables store them."""
    rows = np.empty(embeddings.shape, dtype=np.float16)
    for start in range(0, len(embeddings), NORMALIZE_ROWS):
        chunk = np.asarray(embeddings[start : start + NORMALIZE_ROWS], dtype=np.float32)
        rows[start : start + len(chunk)] = chunk / (np.linalg.norm(chunk, axis=1, keepdims=True) + 1e-12)
    return rows


def write_category(directory: Path, name: str, embeddings: np.ndarray) -> tuple[str, np.ndarray]:
    """Save one category's normalized embeddings as float16; returns the file name and the stored rows."""
    rows = normalized_rows(embeddings)
    file = f"{name}.npy"
    np.save(directory / file, rows)
    return file, rows


def write_category_chunks(
    directory: Path,
    name: str,
    shape: tuple[int, int],
    chunks: Iterable[np.ndarray],
    on_rows: Callable[[np.ndarray], None] = lambda rows: None,
) -> str:
    """A category's table written as its chunks of embeddings come (normalized as write_category does),
    without ever holding the whole table; `on_rows` sees each chunk's stored rows. Returns the file name."""
    file = f"{name}.npy"
    written = 0
    with (directory / file).open("wb") as handle:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in chunks:
            rows = normalized_rows(chunk)
            handle.write(rows.tobytes())
            on_rows(rows)
            written += len(rows)
    if written != shape[0]:
        raise ValueError(f"{file}: {written} rows written for a table of {shape[0]}")
    return file
