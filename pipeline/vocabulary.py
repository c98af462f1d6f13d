"""Vocabulary files (vocab/*.yaml): categories of labels the interrogator picks from.

A category names its mode: `one` (the best label, A1111 style), `many` (every label above a threshold:
tags) or `top` (the k best: flavors), an optional prompt template such as "a photo of {}", and its labels
inline or from a one-label-per-line text file (clip-interrogator's format). Parsed on the controller;
the device reads the JSON index that embed-vocab writes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import describe_error
from pipeline.errors import ConfigError


class CategorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    mode: Literal["one", "many", "top"] = "one"
    template: str = "{}"
    prefix: str = ""  # put before the pick in the caption, e.g. "by " for artists
    threshold: float = Field(0.2, ge=-1, le=1)  # `many`: cosine a label must reach
    k: int = Field(3, ge=1, le=100)  # `top`: how many
    tags: bool = False  # part of the tag set (A1111's deepdanbooru-style answer)
    labels: tuple[str, ...] = ()
    labels_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CategorySpec:
        if "{}" not in self.template:
            raise ValueError(f"template {self.template!r} must contain {{}} where the label goes")
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


class Category(BaseModel):
    """A category with its labels resolved (deduplicated, in file order)."""

    model_config = ConfigDict(frozen=True)

    spec: CategorySpec
    labels: tuple[str, ...]

    def prompt(self, label: str) -> str:
        return self.spec.template.replace("{}", label)


def vocabulary_files(path: Path) -> list[Path]:
    """The YAML file and every labels file it names (inputs of embed-vocab)."""
    spec = _read_spec(path)
    return [path] + [(path.parent / c.labels_file) for c in spec.categories if c.labels_file]


def load_vocabulary(path: Path) -> tuple[VocabularySpec, list[Category]]:
    spec = _read_spec(path)
    categories = []
    for category in spec.categories:
        labels = list(category.labels)
        if category.labels_file:
            source = path.parent / category.labels_file
            if not source.is_file():
                raise ConfigError(f"{path}: categories.{category.name}.labels_file: {source} not found")
            lines = source.read_text(encoding="utf-8").splitlines()
            labels += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        unique = tuple(dict.fromkeys(labels))
        if not unique:
            raise ConfigError(f"{path}: categories.{category.name}: no labels")
        categories.append(Category(spec=category, labels=unique))
    return spec, categories


def _read_spec(path: Path) -> VocabularySpec:
    if not path.is_file():
        raise ConfigError(f"{path}: vocabulary file not found", hint="set stages.embed-vocab.vocabulary")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
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
