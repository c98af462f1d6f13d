"""Image -> embedding -> per-category picks -> caption, as A1111 joins them ("a, b, c").

One lock serializes backend calls (one NPU); ranking is numpy on a precomputed table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from runtime.clip import ClipRuntime
from runtime.label_tables import CategoryTable, LabelTables, normalize

STRUCTURED_TOP = 5  # labels per category in the structured result


@dataclass(frozen=True)
class Pick:
    label: str
    score: float


@dataclass(frozen=True)
class CategoryResult:
    name: str
    mode: str
    picks: tuple[Pick, ...]  # what goes in the caption
    top: tuple[Pick, ...]  # the best labels, for the structured answer


@dataclass(frozen=True)
class Interrogation:
    caption: str
    categories: tuple[CategoryResult, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "caption": self.caption,
            "categories": [
                {
                    "name": c.name,
                    "mode": c.mode,
                    "picks": [{"label": p.label, "score": round(p.score, 4)} for p in c.picks],
                    "top": [{"label": p.label, "score": round(p.score, 4)} for p in c.top],
                }
                for c in self.categories
            ],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True)
class CaptionOptions:
    ranks: bool = False  # A1111's "return ranks": (label:0.123)
    skip: frozenset[str] = frozenset()  # categories left out of the caption
    tags_only: bool = False  # only categories marked `tags` (the deepdanbooru-style answer)
    max_picks: int = 0  # cap on picks per category (0: no cap), A1111's interrogate_clip_dict_limit
    min_score: float = -1.0  # picks below this cosine are dropped


class Interrogator:
    def __init__(self, clip: ClipRuntime, tables: LabelTables) -> None:
        self.clip = clip
        self.tables = tables
        self._lock = threading.Lock()

    def embed(self, image: Image.Image) -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        pixels = self.clip.preprocess(image)
        prepared = time.perf_counter()
        with self._lock:
            embedding = self.clip.encode_pixels(pixels)
        return embedding, {
            "preprocess": (prepared - started) * 1e3,
            "encode": (time.perf_counter() - prepared) * 1e3,
        }

    def interrogate(self, image: Image.Image, options: CaptionOptions | None = None) -> Interrogation:
        options = options or CaptionOptions()
        embedding, timings = self.embed(image)
        started = time.perf_counter()
        vector = normalize(embedding)
        coarse, bound = self.tables.coarse_scores(vector)
        results = tuple(_rank(self.tables, category, coarse, bound, vector) for category in self.tables.categories)
        timings["rank"] = (time.perf_counter() - started) * 1e3
        return Interrogation(format_caption(results, self.tables.categories, options), results, timings)


def _rank(
    tables: LabelTables, category: CategoryTable, coarse: np.ndarray, bound: float, vector: np.ndarray
) -> CategoryResult:
    """Exact picks from coarse scores: only labels the error bound cannot rule out are rescored.

    A label in the exact top n scores at least the n-th best coarse score minus twice the bound; a label
    at or above a threshold scores at least the threshold minus the bound.
    """
    block = coarse[category.start : category.stop]
    need = min(len(block), max(STRUCTURED_TOP, category.k))
    cutoff = float(np.partition(block, len(block) - need)[len(block) - need]) - 2 * bound
    if category.mode == "many":
        cutoff = min(cutoff, category.threshold - bound)
    candidates = np.flatnonzero(block >= cutoff)
    exact = tables.exact_scores(candidates + category.start, vector)
    order = np.argsort(-exact, kind="stable")
    ranked = [Pick(category.labels[candidates[i]], float(exact[i])) for i in order]
    if category.mode == "one":
        picks = ranked[:1]
    elif category.mode == "top":
        picks = ranked[: category.k]
    else:
        picks = [p for p in ranked if p.score >= category.threshold]
    return CategoryResult(category.name, category.mode, tuple(picks), tuple(ranked[:STRUCTURED_TOP]))


def format_caption(results: tuple[CategoryResult, ...], tables: list[CategoryTable], options: CaptionOptions) -> str:
    parts = []
    for result, table in zip(results, tables, strict=True):
        if result.name in options.skip or (options.tags_only and not table.tags):
            continue
        picks = [p for p in result.picks if p.score >= options.min_score]
        if options.max_picks:
            picks = picks[: options.max_picks]
        for pick in picks:
            text = f"{table.prefix}{pick.label}"
            parts.append(f"({text}:{pick.score:.3f})" if options.ranks else text)
    return ", ".join(parts)
