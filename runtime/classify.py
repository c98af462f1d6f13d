"""Constrained output: one image scored against label sets the caller names at request time ("age: a child,
an adult, an elderly person"; "a photo of text" or "a photo"), the job the plan this replaces gave CLIP.

A label's embedding comes from the built tables when the same text (template applied) is there, so it
scores as /clip/v1/interrogate scores it; else from the label cache; else the text encoder encodes it on
the NPU (under the NPU lock, within the request's encode budget) and the cache keeps it. Every row is the
unit-length float16 the tables store, so a label scores the same whichever of the three it came from.

Scores are cosines; probabilities are the model's own: SigLIP's per-label sigmoid with its scale and bias,
CLIP's and Chinese-CLIP's softmax of scale * cosine over the category's labels (what transformers'
`logits_per_image.softmax` gives for zero-shot classification).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.answers import CategoryAnswer, Pick
from runtime.errors import RuntimeErrorBase
from runtime.interrogator import Interrogator
from runtime.label_cache import CacheSettings, LabelCache, cache_file
from runtime.label_tables import CategoryMode, normalized_rows
from runtime.model_io import ScoreScale

SHORTHAND_NAME = "labels"  # the one category of `{"labels": [...]}`
DEFAULT_THRESHOLD = 0.2  # `many`, CLIP-like families, when the category names no bar: a cosine
DEFAULT_MIN_PROBABILITY = 0.1  # `many`, SigLIP: its own probability


class QuestionRefused(RuntimeErrorBase):
    """A question over the service's bounds, or one that cannot be asked (the server answers 422)."""


class QuestionCategory(BaseModel):
    """One thing to decide about the image, over labels the caller names."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    labels: list[str] = Field(min_length=1)
    mode: CategoryMode = Field(CategoryMode.TOP, description="one: the best label; top: the best k; many: all above")
    k: int | None = Field(None, ge=1, description="top: how many picks (default: every label, ranked)")
    threshold: float | None = Field(None, ge=-1, le=1, description="many: the cosine a pick reaches")
    min_probability: float | None = Field(None, ge=0, le=1, description="many: the probability a pick reaches")
    template: str = Field("{}", max_length=200, description="each label is put in it at {}: 'a photo of {}'")

    @field_validator("labels")
    @classmethod
    def _no_empty_label(cls, labels: list[str]) -> list[str]:
        stripped = [label.strip() for label in labels]
        if not all(stripped):
            raise ValueError(f"label {stripped.index('')} is empty")
        return stripped

    @field_validator("template")
    @classmethod
    def _holds_the_label(cls, template: str) -> str:
        if template.count("{}") != 1:
            raise ValueError(f"{template[:100]!r} must hold {{}} once, where the label goes")
        return template

    def text(self, label: str) -> str:
        """What the text encoder sees (CategoryEntry.prompt's rule, so a table's label matches)."""
        return self.template.replace("{}", label)


class Question(BaseModel):
    """What `/clip/v1/classify` and `invoke classify --question` ask: one or more categories."""

    model_config = ConfigDict(extra="forbid")

    categories: list[QuestionCategory] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_names(self) -> Question:
        names = [category.name for category in self.categories]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"category names must differ: {', '.join(map(repr, twice))} appear more than once")
        return self

    @classmethod
    def of_labels(cls, labels: list[str], template: str = "{}") -> Question:
        """The shorthand: one category named `labels`, every label scored and ranked."""
        return cls(categories=[QuestionCategory(name=SHORTHAND_NAME, labels=labels, template=template)])

    def digest(self) -> str:
        """Names the question in a folder's results: answers to another question are not mixed in."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClassifyLimits:
    """Per request; every one answered with a 422 naming it, before the image is decoded."""

    max_categories: int = 16
    max_labels: int = 1_000  # over all categories
    max_label_chars: int = 300
    max_text_encodes: int = 256  # labels neither in the tables nor in the cache (a few ms each on the NPU)


# A folder's run (`invoke classify`) encodes every new label of its question once, for the first image.
BATCH_LIMITS = ClassifyLimits(max_text_encodes=ClassifyLimits.max_labels)


class ClassifyAnswer(BaseModel):
    categories: list[CategoryAnswer]
    text_encodes: int  # labels this request encoded (the rest came from the tables or the cache)
    from_tables: int
    from_cache: int
    timings_ms: dict[str, float]


class Classifier:
    """Questions over one interrogator: its text encoder (loaded on first need), its tables, a cache."""

    def __init__(self, interrogator: Interrogator, limits: ClassifyLimits, cache: LabelCache) -> None:
        self.interrogator, self.limits, self.cache = interrogator, limits, cache
        self._table_rows: dict[str, tuple[int, int]] | None = None  # text -> (category, row), built on first use
        self._index_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @classmethod
    def open(
        cls, interrogator: Interrogator, limits: ClassifyLimits | None = None, cache: CacheSettings | None = None
    ) -> Classifier:
        """With the cache kept beside the interrogator's model set, or in `cache.folder`."""
        clip, cache = interrogator.clip, cache or CacheSettings()
        sha = clip.info.text.sha256
        file = cache_file(clip.models_dir, sha, cache.folder)
        return cls(interrogator, limits or ClassifyLimits(), LabelCache(file, sha, clip.info.projection_dim, cache))

    def check(self, question: Question) -> None:
        """Refuse a question over the bounds at once, naming the bound and the setting that raises it."""
        limits = self.limits
        if len(question.categories) > limits.max_categories:
            raise QuestionRefused(
                f"{len(question.categories)} categories; at most {limits.max_categories} a request "
                "(--classify-max-categories)"
            )
        labels = sum(len(category.labels) for category in question.categories)
        if labels > limits.max_labels:
            raise QuestionRefused(f"{labels} labels; at most {limits.max_labels} a request (--classify-max-labels)")
        for category in question.categories:
            for label in category.labels:
                if len(label) > limits.max_label_chars:
                    raise QuestionRefused(
                        f"category {category.name[:100]!r}: a label of {len(label):,} characters "
                        f"({label[:40]!r}...); at most {limits.max_label_chars} (--classify-max-label-chars)"
                    )

    def classify(self, vector: np.ndarray, question: Question, wait: float | None = None) -> ClassifyAnswer:
        """`vector`: the image's unit-length embedding; `wait` bounds the wait for the NPU (NpuBusy past it)."""
        self.check(question)
        started = time.perf_counter()
        texts = list(
            dict.fromkeys(category.text(label) for category in question.categories for label in category.labels)
        )
        rows, sources = self._rows(texts)
        new = [text for text in texts if text not in rows]
        if len(new) > self.limits.max_text_encodes:
            raise QuestionRefused(
                f"{len(new)} labels are new to this server (not in its tables or cache); it encodes at most "
                f"{self.limits.max_text_encodes} a request (--classify-max-encodes): send them over several "
                "requests (each is encoded once, then cached)"
            )
        looked_up = time.perf_counter()
        encodes = 0
        if new:
            fresh, encodes = self._encode(new, wait)
            rows |= fresh
        encoded = time.perf_counter()
        scale = self.interrogator.tables.index.model.scores
        answers = [_answer(category, rows, vector, scale) for category in question.categories]
        done = time.perf_counter()
        timings = {"lookup": looked_up - started, "text_encode": encoded - looked_up, "score": done - encoded}
        return ClassifyAnswer(
            categories=answers,
            text_encodes=encodes,
            from_tables=sources.count("tables"),
            from_cache=sources.count("cache") + len(new) - encodes,
            timings_ms={name: round(seconds * 1e3, 2) for name, seconds in timings.items()},
        )

    def _rows(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The rows known without encoding, and where each came from."""
        index, categories = self._table_index(), self.interrogator.tables.categories
        rows: dict[str, np.ndarray] = {}
        sources = []
        for text in texts:
            if text in index:
                category, row = index[text]
                rows[text] = np.asarray(categories[category].rows[row], dtype=np.float16)
                sources.append("tables")
            elif (cached := self.cache.get(text)) is not None:
                rows[text] = cached
                sources.append("cache")
        return rows, sources

    def _table_index(self) -> dict[str, tuple[int, int]]:
        """Every table label's text with its template applied: built once, on the first question."""
        with self._index_lock:
            if self._table_rows is None:
                self._table_rows = {}
                for number, category in enumerate(self.interrogator.tables.categories):
                    for row, label in enumerate(category.labels):
                        self._table_rows.setdefault(category.prompt(label), (number, row))
            return self._table_rows

    def _encode(self, texts: list[str], wait: float | None) -> tuple[dict[str, np.ndarray], int]:
        """The rows of `texts`, and how many of them this call encoded. One call encodes at a time: a label
        that concurrent questions all lack is encoded once, the others finding it cached."""
        with self._encode_lock:
            rows = {text: cached for text in texts if (cached := self.cache.get(text)) is not None}
            missing = [text for text in texts if text not in rows]
            if missing:
                stored = normalized_rows(self.interrogator.clip.encode_texts(missing, wait))
                for text, row in zip(missing, stored, strict=True):
                    self.cache.put(text, row)
                    rows[text] = row
                self.cache.save()
        return rows, len(missing)


def _answer(
    category: QuestionCategory, rows: dict[str, np.ndarray], vector: np.ndarray, scale: ScoreScale
) -> CategoryAnswer:
    labels = list(dict.fromkeys(category.labels))  # a label given twice is one label, not half its probability
    matrix = np.stack([rows[category.text(label)] for label in labels]).astype(np.float32)
    cosines = matrix @ np.asarray(vector, dtype=np.float32)
    logits = scale.logit_scale * cosines.astype(np.float64)
    if scale.sigmoid:
        probabilities = 1.0 / (1.0 + np.exp(-(logits + scale.logit_bias)))
    else:
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-cosines, kind="stable")
    ranked = [
        Pick(label=labels[i], score=round(float(cosines[i]), 4), probability=round(float(probabilities[i]), 4))
        for i in order.tolist()
    ]
    if category.mode is CategoryMode.ONE:
        picks = ranked[:1]
    elif category.mode is CategoryMode.TOP:
        picks = ranked[: category.k or len(ranked)]
    else:
        threshold, least = category.threshold, category.min_probability
        if threshold is None and least is None:
            threshold, least = (None, DEFAULT_MIN_PROBABILITY) if scale.sigmoid else (DEFAULT_THRESHOLD, None)
        keep = (cosines >= (threshold if threshold is not None else -np.inf)) & (probabilities >= (least or 0.0))
        picks = [pick for i, pick in zip(order.tolist(), ranked, strict=True) if keep[i]]
    return CategoryAnswer(name=category.name, mode=category.mode.value, labels=len(labels), picks=picks, top=ranked)
