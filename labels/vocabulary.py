"""Vocabulary files (vocab/*.yaml): categories of labels the interrogator picks from.

A category names its mode: `one` (the best label, A1111 style), `many` (every label above a threshold:
tags) or `top` (the k best: flavors), an optional prompt template such as "a photo of {}", and its labels
inline or from a one-label-per-line text file (clip-interrogator's format). Parsed on the controller;
the device reads the JSON index that embed-vocab writes.

A labels file has no comment syntax unless its category says `comments: true`: real label lists hold
labels such as `#pixelart`. Every non-empty line (trimmed) is a label; what is dropped or merged on the
way to the tables is counted, never silent (LabelStats).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import describe_error
from pipeline.errors import ConfigError
from pipeline.user_files import read_lines, read_yaml
from runtime.label_tables import CategoryMode, LabelChanges, MergedLabel


class CategorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    mode: CategoryMode = CategoryMode.ONE
    template: str = "{}"
    prefix: str = ""  # put before the pick in the caption, e.g. "by " for artists
    threshold: float = Field(0.2, ge=-1, le=1)  # `many`: cosine a label must reach (CLIP, Chinese-CLIP)
    # `many` with a sigmoid family (SigLIP): the model's own probability a label must reach
    min_probability: float = Field(0.1, gt=0, lt=1)
    k: int = Field(3, ge=1, le=100)  # `top`: how many
    tags: bool = False  # part of the tag set (A1111's deepdanbooru-style answer)
    labels: tuple[str, ...] = ()
    labels_file: str | None = None
    comments: bool = False  # labels_file lines starting with "#" are comments (off: they are labels)
    # Each given label becomes one label per form ("by {}", "inspired by {}"), all of the first form first:
    # clip-interrogator builds its artists and trending lists so.
    forms: tuple[str, ...] = ()
    caption: bool = True  # part of the A1111 caption (off: only prompt modes use it, e.g. negative terms)

    @model_validator(mode="after")
    def _check(self) -> CategorySpec:
        if "{}" not in self.template:
            raise ValueError(f"template {self.template!r} must contain {{}} where the label goes")
        if any("{}" not in form for form in self.forms):
            raise ValueError(f"every form must contain {{}} where the given label goes: {list(self.forms)}")
        if not self.labels and not self.labels_file:
            raise ValueError("give labels (a list) or labels_file (one label a line)")
        return self


class VocabularySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "vocabulary"
    categories: tuple[CategorySpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> VocabularySpec:
        names = [c.name for c in self.categories]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"category names must be unique; repeated: {', '.join(duplicates)}")
        return self


SHOWN = 5  # labels named in a warning
MERGE_CHUNK = 8192  # labels tokenized at a time when looking for token-identical ones
MAX_LABEL_CHARS = 1000  # far past any text encoder's context; longer is a file that is not a label list
# Terminal escape sequences first (whole), then single control characters: C0/C1 (NUL, ESC, DEL, NEL ...) and
# the bidi controls that make a label display as another (U+202E). Line and paragraph separators become spaces.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SEPARATORS = re.compile("[\t\u2028\u2029]")


def clean_label(text: str) -> str:
    """A label as it may go into a caption: no escape sequences or control characters, trimmed."""
    return _CONTROLS.sub("", _SEPARATORS.sub(" ", _ESCAPES.sub("", text))).strip()


@dataclass(frozen=True)
class LabelStats:
    """What happened to a category's labels between the file and the tables."""

    read: int = 0  # labels given (inline and file lines that are labels)
    empty_lines: int = 0
    comment_lines: int = 0
    exact_duplicates: int = 0
    cleaned: int = 0  # labels that held control characters or escape sequences, removed
    token_merges: tuple[tuple[str, str], ...] = ()  # (dropped spelling, the kept one with the same token ids)
    truncated: tuple[str, ...] = ()  # labels longer than the text encoder's context, cut to fit

    def changes(self) -> LabelChanges:
        """As vocab.json and embed-vocab's report keep them."""
        return LabelChanges(
            read=self.read,
            empty_lines=self.empty_lines,
            comment_lines=self.comment_lines,
            exact_duplicates=self.exact_duplicates,
            cleaned=self.cleaned,
            token_merges=len(self.token_merges),
            merged=tuple(MergedLabel(dropped, kept) for dropped, kept in self.token_merges[:SHOWN]),
            truncated=len(self.truncated),
            truncated_labels=self.truncated[:SHOWN],
        )

    def problems(self) -> list[str]:
        """One phrase per kind of change, for the warning line; empty when the labels went in as given."""
        phrases = []
        if self.cleaned:
            phrases.append(f"{self.cleaned} had control characters or escape sequences removed")
        if self.exact_duplicates:
            phrases.append(f"{self.exact_duplicates} exact duplicates dropped")
        if self.token_merges:
            shown = "; ".join(f"{d!r} -> {k!r}" for d, k in self.token_merges[:3])
            phrases.append(f"{len(self.token_merges)} merged into a spelling with the same tokens ({shown})")
        if self.truncated:
            shown = "; ".join(repr(label[:40] + ("..." if len(label) > 40 else "")) for label in self.truncated[:3])
            phrases.append(f"{len(self.truncated)} cut to the context length ({shown})")
        return phrases


@dataclass(frozen=True)
class Category:
    """A category with its labels resolved (deduplicated, in file order) and the count of what changed."""

    spec: CategorySpec
    labels: tuple[str, ...]
    stats: LabelStats = field(default_factory=LabelStats)

    def prompt(self, label: str) -> str:
        return self.spec.template.replace("{}", label)


Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # prompts -> (ids [n, context], cut to fit)


def merge_token_identical(category: Category, tokenize: Tokenize) -> Category:
    """Labels whose prompts tokenize to the same ids get the same embedding (`8k` / `8 k`, and two long
    labels that differ only past the context): keep the first spelling, count the rest."""
    first: dict[bytes, str] = {}  # a digest of the ids: 16 bytes a label, not the 616 of its ids
    kept, merges, truncated = [], [], []
    for start in range(0, len(category.labels), MERGE_CHUNK):
        labels = category.labels[start : start + MERGE_CHUNK]
        ids, cut = tokenize([category.prompt(label) for label in labels])
        for label, row, was_cut in zip(labels, ids, cut, strict=True):
            key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            if key in first:
                merges.append((label, first[key]))
            else:
                first[key] = label
                kept.append(label)
            if was_cut:
                truncated.append(label)
    stats = replace(category.stats, token_merges=tuple(merges), truncated=tuple(truncated))
    return Category(spec=category.spec, labels=tuple(kept), stats=stats)


def vocabulary_files(path: Path) -> list[Path]:
    """The YAML file (none for a folder) and every labels file it names (inputs of embed-vocab)."""
    spec = _read_spec(path)
    own = [path] if path.is_file() else []
    return own + [(path.parent / c.labels_file) for c in spec.categories if c.labels_file]


def load_vocabulary(path: Path) -> tuple[VocabularySpec, list[Category]]:
    spec = _read_spec(path)
    return spec, [_load_category(path, category) for category in spec.categories]


def _load_category(path: Path, category: CategorySpec) -> Category:
    """Inline labels, then the labels file's: trimmed, cleaned, deduplicated, each change counted."""
    given = [(f"{path}: categories.{category.name}.labels[{i}]", text) for i, text in enumerate(category.labels)]
    comments = 0
    if category.labels_file:
        source = path.parent / category.labels_file
        if not source.is_file():
            raise ConfigError(f"{path}: categories.{category.name}.labels_file: {source} not found")
        for number, line in enumerate(read_lines(source, "labels file"), start=1):
            if category.comments and line.strip().startswith("#"):
                comments += 1
            else:
                given.append((f"{source}: line {number}", line))
    blank = sum(1 for _, text in given if not text.strip())
    if category.forms:
        given = [
            (where, form.replace("{}", text.strip()))
            for form in category.forms
            for where, text in given
            if text.strip()
        ]
    labels, cleaned = [], 0
    for where, text in given:
        if len(text) > MAX_LABEL_CHARS:
            raise ConfigError(
                f"{where}: a label of {len(text):,} characters (at most {MAX_LABEL_CHARS:,})",
                hint="one label a line: is this a labels file?",
            )
        label = clean_label(text)
        cleaned += label != text.strip()
        if label:
            labels.append(label)
    empty = blank if category.forms else len(given) - len(labels)
    unique = tuple(dict.fromkeys(labels))
    if not unique:
        raise ConfigError(f"{path}: categories.{category.name}: no labels")
    stats = LabelStats(len(labels), empty, comments, len(labels) - len(unique), cleaned)
    return Category(spec=category, labels=unique, stats=stats)


# A1111's interrogate folder: `<name>.txt` is a category taking the best label, `<name>.top<N>.txt` the N best.
_TOP_N = re.compile(r"^(?P<name>.+?)\.top(?P<n>\d+)$")


def folder_spec(folder: Path) -> VocabularySpec:
    """A folder of label lists as a vocabulary, as A1111 reads its `interrogate/` folder (clip-interrogator's
    `data/` is one too): a category per `.txt` file, in name order, named by the file."""
    categories, sources = [], {}
    for file in sorted(folder.glob("*.txt")):
        match = _TOP_N.match(file.stem)
        name, top = (match["name"], int(match["n"])) if match else (file.stem, 1)
        mode = CategoryMode.TOP if top > 1 else CategoryMode.ONE
        category_name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
        if category_name in sources:  # `a b.txt` and `a_b.txt`, or two names of other scripts: both `__`
            raise ConfigError(
                f"{folder}: {sources[category_name].name} and {file.name} are both category {category_name!r}",
                hint="rename one of them (a category's name keeps only A-Z, a-z, 0-9, _ and - of the file's)",
            )
        sources[category_name] = file
        categories.append(
            CategorySpec(name=category_name, mode=mode, k=min(max(top, 1), 100), labels_file=str(file.resolve()))
        )
    if not categories:
        raise ConfigError(f"{folder}: no .txt label lists in this folder", hint="one label a line, a file a category")
    return VocabularySpec(name=folder.name, categories=tuple(categories))


def _read_spec(path: Path) -> VocabularySpec:
    if path.is_dir():
        return folder_spec(path)
    if not path.is_file():
        raise ConfigError(f"{path}: vocabulary file not found", hint="set stages.embed-vocab.vocabulary")
    raw = read_yaml(path, "vocabulary")
    try:
        return VocabularySpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{path}: {_with_names(raw, e)}" for e in exc.errors())) from None


def _with_names(raw: object, error: dict) -> str:
    """Key paths name categories (`categories.medium.mode`) rather than index them."""
    loc = list(error["loc"])
    if len(loc) >= 2 and loc[0] == "categories" and isinstance(loc[1], int) and isinstance(raw, dict):
        with contextlib.suppress(IndexError, AttributeError, KeyError, TypeError):
            loc[1] = raw["categories"][loc[1]].get("name", loc[1])
    return describe_error({**error, "loc": tuple(loc)})
