"""Do the device's picks agree with the float model's? The number a user wants after a build.

A cosine of 0.999 between the quantized and the float embedding says little about the caption: a 1%
move can swap two close labels. This compares what a user sees: the same photos captioned from the float
model's embeddings (verify's PyTorch references) and from the device's, over the full vocabulary. Per
category: how often the first pick is the same (top-1 agreement) and how much the picked sets overlap;
over the tag categories: the Jaccard index of the tag sets; and every photo whose caption changed, both
captions side by side.

Only what the caption and the tags show is judged (`judged`): a category outside them (clip-interrogator's
100,000 flavors, read by its prompt modes) is listed, not held to a bar, since among that many labels, most
a hair apart, the first pick is a coin toss for any quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.interrogator import CategoryResult, Scores, caption, tag_probabilities
from runtime.label_tables import LabelTables
from runtime.tagger import TagList, TagThresholds


@dataclass(frozen=True)
class CategoryAgreement:
    category: str
    mode: str
    top1: float  # share of the photos whose first pick is the same
    overlap: float  # mean Jaccard index of the float and the device picks (1.0 when both are empty)
    judged: bool = True  # in the caption or the tags (see the module's docstring)


@dataclass(frozen=True)
class ChangedCaption:
    photo: str
    float_caption: str
    device_caption: str


@dataclass(frozen=True)
class PickAgreement:
    photos: int
    categories: tuple[CategoryAgreement, ...]
    tags_jaccard: float | None  # None: the vocabulary has no tag category
    changed: tuple[ChangedCaption, ...]  # the photos whose caption differs
    device_captions: dict[str, str]  # every photo's caption from the device's embedding

    COLUMNS = ("category", "mode", "same first pick", "overlap (Jaccard)")

    def rows(self) -> list[tuple[str, str, str, str]]:
        """A row per category, and one for the tag set: the table the terminal and the report show."""
        rows = [
            (c.category if c.judged else f"{c.category} (not judged)", c.mode, f"{c.top1:.0%}", f"{c.overlap:.2f}")
            for c in self.categories
        ]
        if self.tags_jaccard is not None:
            rows.append(("tag set", "many", "", f"{self.tags_jaccard:.2f}"))
        return rows

    @property
    def top1_min(self) -> float:
        """The worst judged category's top-1 agreement: the figure the smoke test is held to."""
        return min((c.top1 for c in self.categories if c.judged), default=1.0)


def pick_agreement(
    tables: LabelTables, photos: tuple[str, ...], reference: np.ndarray, device: np.ndarray
) -> PickAgreement:
    """Each photo's picks from its float embedding (a row of `reference`) against those from its device
    embedding (the same row of `device`)."""
    if not photos:
        return PickAgreement(0, (), None, (), {})
    float_scores = [Scores.of(tables, row) for row in reference]
    device_scores = [Scores.of(tables, row) for row in device]
    float_runs = [caption(scores) for scores in float_scores]
    device_runs = [caption(scores) for scores in device_scores]
    categories = tuple(
        _category_agreement(
            [run[1][i] for run in float_runs], [run[1][i] for run in device_runs], table.caption or table.tags
        )
        for i, table in enumerate(tables.categories)
    )
    has_tags = any(category.tags for category in tables.categories)
    jaccards = [
        _jaccard(set(tag_probabilities(a)), set(tag_probabilities(b)))
        for a, b in zip(float_scores, device_scores, strict=True)
    ]
    changed = tuple(
        ChangedCaption(photo, want[0], got[0])
        for photo, want, got in zip(photos, float_runs, device_runs, strict=True)
        if want[0] != got[0]
    )
    return PickAgreement(
        photos=len(photos),
        categories=categories,
        tags_jaccard=float(np.mean(jaccards)) if has_tags and jaccards else None,
        changed=changed,
        device_captions={photo: run[0] for photo, run in zip(photos, device_runs, strict=True)},
    )


@dataclass(frozen=True)
class ChangedTags:
    photo: str
    lost: tuple[str, ...]  # the float model's tags the device's answer lacks
    gained: tuple[str, ...]  # the device's tags the float model's answer lacks


@dataclass(frozen=True)
class TagAgreement:
    """A WD tagger on the device against the float model: its tags (general and character, at the bars)."""

    photos: int
    same_set: float  # share of the photos tagged with exactly the float model's set
    jaccard: float  # mean Jaccard index of the two sets (1.0 when both are empty)
    changed: tuple[ChangedTags, ...]


def tag_agreement(
    tags: TagList, thresholds: TagThresholds, photos: tuple[str, ...], reference: np.ndarray, device: np.ndarray
) -> TagAgreement:
    """Each photo's tags from the float model's probabilities (a row of `reference`) against those from the
    device's (the same row of `device`)."""
    wanted = [set(tags.answer(row, thresholds).tags) for row in reference]
    got = [set(tags.answer(row, thresholds).tags) for row in device]
    changed = tuple(
        ChangedTags(photo, tuple(sorted(a - b)), tuple(sorted(b - a)))
        for photo, a, b in zip(photos, wanted, got, strict=True)
        if a != b
    )
    jaccards = [_jaccard(a, b) for a, b in zip(wanted, got, strict=True)]
    same = [a == b for a, b in zip(wanted, got, strict=True)]
    return TagAgreement(
        len(photos), float(np.mean(same)) if photos else 1.0, float(np.mean(jaccards)) if photos else 1.0, changed
    )


def _category_agreement(wanted: list[CategoryResult], got: list[CategoryResult], judged: bool) -> CategoryAgreement:
    first = [bool(a.top and b.top and a.top[0].label == b.top[0].label) for a, b in zip(wanted, got, strict=True)]
    overlap = [
        _jaccard({p.label for p in a.picks}, {p.label for p in b.picks}) for a, b in zip(wanted, got, strict=True)
    ]
    top1, overlap_mean = float(np.mean(first)), float(np.mean(overlap))
    return CategoryAgreement(wanted[0].name, wanted[0].mode.value, top1, overlap_mean, judged)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0
