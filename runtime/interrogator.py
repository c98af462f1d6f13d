"""Image -> embedding -> per-category picks -> caption, as A1111 joins them ("a, b, c").

One lock serializes backend calls (one NPU); ranking is numpy on a precomputed table.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from runtime.clip import ClipRuntime
from runtime.label_format import DEEPBOORU, PLAIN, LabelFormat
from runtime.label_tables import CategoryMode, CategoryTable, ImageSide, LabelTables, normalize
from runtime.model_io import ScoreScale

STRUCTURED_TOP = 5  # labels per category in the structured result


@dataclass(frozen=True)
class Pick:
    label: str
    score: float  # cosine
    row: int = field(default=-1, compare=False)  # the label's row in its category table
    probability: float = field(default=0.0, compare=False)  # the model's: see Scores.probabilities


@dataclass(frozen=True)
class CategoryResult:
    name: str
    mode: CategoryMode
    picks: tuple[Pick, ...]  # what goes in the caption
    top: tuple[Pick, ...]  # the best labels, for the structured answer
    labels: int = 0  # labels the category ranks


@dataclass(frozen=True)
class Interrogation:
    caption: str
    categories: tuple[CategoryResult, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CaptionOptions:
    """A1111's `clip` interrogation settings (the interrogate_* options), and a caption run's."""

    skip: frozenset[str] = frozenset()  # interrogate_clip_skip_categories
    dict_limit: int = 0  # interrogate_clip_dict_limit: only each category's first N labels (0: all)
    threshold: float | None = None  # `many` categories' bar instead of the vocabulary's (its terms: see many_bar)
    max_tags: int | None = None  # `many` categories: at most this many picks each, best first
    format: LabelFormat = PLAIN  # interrogate_return_ranks is its `ranks`
    # Rank the categories the caption does not write too (a structured answer shows them all); off, only
    # what the caption writes is ranked: A1111's answer and a training set's captions.
    every_category: bool = True


@dataclass(frozen=True)
class TagOptions:
    """A1111's `deepdanbooru` settings (the deepbooru_* options) over the vocabulary's tag categories."""

    threshold: float = 0.5  # interrogate_deepbooru_score_threshold, on tag_probability's scale
    # deepbooru_use_spaces (underscores=False: `_` written as spaces), deepbooru_escape, deepbooru_sort_alpha,
    # deepbooru_filter_tags (exclude), interrogate_return_ranks: A1111's defaults
    format: LabelFormat = DEEPBOORU


def tag_scale(category: CategoryTable, scale: ScoreScale) -> ScoreScale:
    """The sigmoid that makes a tag's probability. SigLIP's is the model's own. A softmax family's
    probability of one label among a category's says nothing about a tag alone: its tags get the model's
    logit scale around the category's threshold, so 0.5 (A1111's default deepbooru threshold) is
    exactly the vocabulary's own threshold."""
    if scale.sigmoid:
        return scale
    return ScoreScale(scale.logit_scale, -scale.logit_scale * category.threshold)


def tag_probability(cosine: float, category: CategoryTable, scale: ScoreScale) -> float:
    return tag_scale(category, scale).probability(cosine)


def many_threshold(category: CategoryTable, scale: ScoreScale, bar: float | None = None) -> float:
    """The cosine a `many` category's label must reach: its threshold, or for SigLIP the cosine where the
    model's probability reaches the category's min_probability; `bar` in the same terms instead (a cosine,
    for SigLIP a probability) when given."""
    if scale.sigmoid:
        return scale.cosine_at(category.min_probability if bar is None else bar)
    return category.threshold if bar is None else bar


class Interrogator:
    def __init__(self, clip: ClipRuntime, tables: LabelTables) -> None:
        tables.index.check_made_by(clip.info)
        self.clip = clip
        self.tables = tables

    def embed(self, image: Image.Image | np.ndarray, wait: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Preprocess (any number at once; skipped for an array of pixel values), then encode (one at a
        time, holding the NPU lock: one NPU, perhaps shared with another program). `wait` bounds how long
        a caller queues for it (NpuBusy past it)."""
        started = time.perf_counter()
        pixels = image if isinstance(image, np.ndarray) else self.clip.preprocess(image)
        prepared = time.perf_counter()
        with self.clip.npu.hold(wait):
            encode_started = time.perf_counter()
            embedding = self.clip.encode_pixels(pixels)
        done = time.perf_counter()
        return embedding, {
            "preprocess": (prepared - started) * 1e3,
            "queue": (encode_started - prepared) * 1e3,
            "encode": (done - encode_started) * 1e3,
        }

    def score(self, image: Image.Image | np.ndarray, wait: float | None = None) -> tuple[Scores, dict[str, float]]:
        """One image against every label (coarse pass); captions and tags are read from this."""
        embedding, timings = self.embed(image, wait)
        started = time.perf_counter()
        scores = Scores.of(self.tables, embedding)
        timings["rank"] = (time.perf_counter() - started) * 1e3
        return scores, timings

    def caption(self, scores: Scores, options: CaptionOptions | None = None) -> tuple[str, tuple[CategoryResult, ...]]:
        return caption(scores, options)

    def tags(self, scores: Scores, options: TagOptions | None = None) -> str:
        return format_tags(tag_probabilities(scores, options), options or TagOptions())

    def tags_note(self, scores: Scores, options: TagOptions | None = None) -> str:
        """Why the tag answer is empty, in words (the best tag and the bar it missed); "" when it is not."""
        options = options or TagOptions()
        if self.tags(scores, options):
            return ""
        scale = self.tables.index.model.scores
        best: tuple[float, Pick] | None = None
        for category in self.tables.categories:
            top = _rank(scores, category).top if category.tags else ()
            if top and (best is None or tag_probability(top[0].score, category, scale) > best[0]):
                best = (tag_probability(top[0].score, category, scale), top[0])
        if best is None:
            return "no tag categories in this vocabulary (tags: true)"
        probability, pick = best
        return (
            f"no tag reached the threshold: the closest, {pick.label!r} (cosine {pick.score:.3f}), has probability "
            f"{probability:.2f} < interrogate_deepbooru_score_threshold {options.threshold:g}"
        )

    def interrogate(
        self, image: Image.Image, options: CaptionOptions | None = None, wait: float | None = None
    ) -> Interrogation:
        scores, timings = self.score(image, wait)
        started = time.perf_counter()
        caption, results = self.caption(scores, options)
        timings["rank"] += (time.perf_counter() - started) * 1e3
        return Interrogation(caption, results, timings)

    def tag(self, image: Image.Image, options: TagOptions | None = None, wait: float | None = None) -> str:
        return self.tags(self.score(image, wait)[0], options)


@dataclass(frozen=True)
class Ranked:
    """A category's rescored candidates, best first, each Pick made only when read: a caption reads a few
    of them, and near-ties can make hundreds of candidates."""

    labels: tuple[str, ...]  # the category's
    rows: list[int]
    scores: list[float]
    probabilities: list[float]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Pick]:
        return (self.pick(index) for index in range(len(self.rows)))

    def pick(self, index: int) -> Pick:
        row = self.rows[index]
        return Pick(self.labels[row], self.scores[index], row, self.probabilities[index])

    def head(self, count: int) -> tuple[Pick, ...]:
        return tuple(self.pick(index) for index in range(min(count, len(self.rows))))

    def at_least(self, score: float) -> Iterator[Pick]:
        """The picks scoring `score` or more (a prefix: they are sorted)."""
        return itertools.takewhile(lambda pick: pick.score >= score, self)


@dataclass(frozen=True)
class Scores:
    """One image against the labels: a category's int8 coarse scores and their error bound, computed the
    first time something reads that category (a caption does not read clip-interrogator's 100,000
    flavors), and the exact rescorer. One request's: not shared between threads."""

    tables: LabelTables
    vector: np.ndarray
    _coarse: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict, compare=False, repr=False)
    image: ImageSide = field(init=False, compare=False, repr=False)  # the bounds' image side, once an image
    # category -> (max logit, sum of exp(logit - max)) over its coarse scores: a softmax's normalizer
    _coarse_sums: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", ImageSide.of(self.vector))  # frozen: its one assignment

    @classmethod
    def of(cls, tables: LabelTables, embedding: np.ndarray) -> Scores:
        return cls(tables, normalize(embedding))

    @classmethod
    def batch(cls, tables: LabelTables, embeddings: list[np.ndarray], categories: list[CategoryTable]) -> list[Scores]:
        """Several images' scores, `categories` ranked for all of them at once: one read of a category's
        8-bit rows serves the batch (see modeling/rank_model.py)."""
        batch = [cls.of(tables, embedding) for embedding in embeddings]
        if not batch:
            return batch
        vectors, sides = np.stack([scores.vector for scores in batch]), [scores.image for scores in batch]
        for category in categories:
            for scores, ranked in zip(batch, tables.coarse_scores(category, vectors, sides), strict=True):
                scores._coarse[category.name] = ranked
        return batch

    def coarse(self, category: CategoryTable) -> np.ndarray:
        """The category's coarse cosines (its labels' order)."""
        return self._ranked(category)[0]

    def bound(self, category: CategoryTable) -> float:
        """How far any of the category's coarse cosines may be from the exact one."""
        return self._ranked(category)[1]

    def _ranked(self, category: CategoryTable) -> tuple[np.ndarray, float]:
        if category.name not in self._coarse:
            self._coarse[category.name] = self.tables.coarse_scores(category, self.vector[None], [self.image])[0]
        return self._coarse[category.name]

    @property
    def scale(self) -> ScoreScale:
        return self.tables.index.model.scores

    def exact(self, category: CategoryTable, candidates: np.ndarray) -> Ranked:
        """Exact scores of a category's candidate rows (indices within the category), best first."""
        exact = self.tables.exact_scores(category, candidates, self.vector)
        probabilities = self.probabilities(category, candidates, exact)
        order = np.argsort(-exact, kind="stable")
        # Whole arrays to Python numbers at once: per-element numpy scalars cost more than the ranking.
        return Ranked(category.labels, candidates[order].tolist(), exact[order].tolist(), probabilities[order].tolist())

    def probabilities(self, category: CategoryTable, candidates: np.ndarray, exact: np.ndarray) -> np.ndarray:
        """The model's probability of each candidate: SigLIP's per-label sigmoid(scale*cos + bias); for
        CLIP and Chinese-CLIP the softmax of scale*cos over the category's labels (A1111's convention,
        with the model's own scale), normalized over every label: the exact cosines where known, the
        coarse ones (within `bound`) for the rest."""
        scale = self.scale
        if scale.sigmoid:
            return 1.0 / (1.0 + np.exp(-(scale.logit_scale * exact.astype(np.float64) + scale.logit_bias)))
        coarse = scale.logit_scale * self.coarse(category)[candidates].astype(np.float64)
        logits = scale.logit_scale * exact.astype(np.float64)
        if category.name not in self._coarse_sums:  # once per category, whichever labels are rescored
            every = scale.logit_scale * self.coarse(category).astype(np.float64)
            self._coarse_sums[category.name] = (float(every.max()), float(np.exp(every - every.max()).sum()))
        top, total = self._coarse_sums[category.name]
        peak = max(top, float(logits.max(initial=-math.inf)))
        total = total * math.exp(top - peak) - float(np.exp(coarse - peak).sum()) + float(np.exp(logits - peak).sum())
        return np.exp(logits - peak) / total


def caption(scores: Scores, options: CaptionOptions | None = None) -> tuple[str, tuple[CategoryResult, ...]]:
    """The `clip` caption: each category's picks, in vocabulary order. Vocabularies share words (a flavor
    can be a tag too): a label already in the caption is not picked again, the next one is."""
    options = options or CaptionOptions()
    categories = caption_categories(scores.tables, options)
    taken: set[str] = set()
    results = []
    for category in categories:
        result = _rank(scores, category, options, frozenset(taken))
        if category.caption and category.name not in options.skip:
            taken |= {_same_label(pick.label) for pick in result.picks}
        results.append(result)
    return format_caption(tuple(results), categories, options), tuple(results)


def caption_categories(tables: LabelTables, options: CaptionOptions) -> list[CategoryTable]:
    """The categories a caption ranks: those it writes, or every one (`every_category`)."""
    return [c for c in tables.categories if options.every_category or (c.caption and c.name not in options.skip)]


def tag_probabilities(scores: Scores, options: TagOptions | None = None) -> dict[str, float]:
    """The `deepdanbooru` answer as data: every tag-category label at or above the probability threshold,
    with its probability."""
    options = options or TagOptions()
    found: dict[str, float] = {}
    for category in scores.tables.categories:
        if not category.tags:
            continue
        scale = tag_scale(category, scores.scale)
        for pick in _above(scores, category, scale.cosine_at(options.threshold)):
            found[pick.label] = max(found.get(pick.label, 0.0), scale.probability(pick.score))
    return found


def _rank(
    scores: Scores, category: CategoryTable, options: CaptionOptions | None = None, taken: frozenset[str] = frozenset()
) -> CategoryResult:
    """Exact picks from coarse scores: only labels the error bound cannot rule out are rescored. Labels
    in `taken` (already in the caption) are not picked; each may push one more label into the running.

    A label in the exact top n scores at least the n-th best coarse score minus twice the bound; a label
    at or above a threshold scores at least the threshold minus the bound.
    """
    options = options or CaptionOptions()
    dict_limit = options.dict_limit
    size = min(len(category.labels), dict_limit) if dict_limit else len(category.labels)
    block, bound = scores.coarse(category)[:size], scores.bound(category)
    need = min(size, max(STRUCTURED_TOP, category.k) + len(taken))
    cutoff = float(np.partition(block, size - need)[size - need]) - 2 * bound
    threshold = many_threshold(category, scores.scale, options.threshold)
    if category.mode is CategoryMode.MANY:
        cutoff = min(cutoff, threshold - bound)
    ranked = scores.exact(category, np.flatnonzero(block >= cutoff))
    free = (pick for pick in ranked if _same_label(pick.label) not in taken) if taken else iter(ranked)
    if category.mode is CategoryMode.ONE:
        picks = list(itertools.islice(free, 1))
    elif category.mode is CategoryMode.TOP:
        picks = _distinct(free, category, category.k)
    else:
        picks = _distinct(itertools.takewhile(lambda p: p.score >= threshold, free), category, options.max_tags)
    return CategoryResult(category.name, category.mode, tuple(picks), ranked.head(STRUCTURED_TOP), len(category.labels))


def _same_label(label: str) -> str:
    """Two spellings a reader takes for one label: case and runs of spaces aside."""
    return " ".join(label.lower().split())


def _distinct(ranked: Iterable[Pick], category: CategoryTable, limit: int | None = None) -> list[Pick]:
    """Picks whose embeddings differ (the first `limit` of them), read only as far as needed: two spellings
    with one embedding would repeat a word in the caption."""
    if limit == 0:
        return []
    seen: set[bytes] = set()
    kept: list[Pick] = []
    for pick in ranked:
        key = category.rows[pick.row].tobytes()
        if key not in seen:
            seen.add(key)
            kept.append(pick)
            if len(kept) == limit:
                break
    return kept


def _above(scores: Scores, category: CategoryTable, cutoff: float) -> list[Pick]:
    block = scores.coarse(category)
    return list(scores.exact(category, np.flatnonzero(block >= cutoff - scores.bound(category))).at_least(cutoff))


def format_caption(results: tuple[CategoryResult, ...], tables: list[CategoryTable], options: CaptionOptions) -> str:
    return options.format.format(caption_picks(results, tables, options))


def caption_picks(
    results: tuple[CategoryResult, ...], tables: list[CategoryTable], options: CaptionOptions
) -> list[tuple[str, float]]:
    """The caption's labels (each with its category's prefix) and cosines, in the order picked."""
    return [
        (f"{table.prefix}{pick.label}", pick.score)
        for result, table in zip(results, tables, strict=True)
        if result.name not in options.skip and table.caption
        for pick in result.picks
    ]


def format_tags(found: dict[str, float], options: TagOptions) -> str:
    """Tags as A1111's deepbooru writes them (with its options): `found` maps tags to probabilities."""
    return options.format.format(found.items())
