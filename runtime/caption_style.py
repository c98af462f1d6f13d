"""How a training set's captions are written: pipeline.yaml's `caption:` section and `invoke caption`'s flags
(which override it), with kohya-ss sd-scripts' tagger options where it has one (README: Captioning a
training set). The labels' part becomes a LabelFormat, which the devices get with their task; the files'
part (extension, what to do with an existing file) stays with the writer, here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.label_format import Existing, LabelFormat, TagOrder, exclusions

if TYPE_CHECKING:
    from runtime.interrogator import CaptionOptions


class CaptionStyle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: tuple[str, ...] = ()  # kohya --always_first_tags: written first (a trigger word), never twice
    suffix: tuple[str, ...] = ()  # written last
    existing: Existing = Existing.SKIP  # a caption file already there: skip, overwrite, append, prepend
    exclude: tuple[str, ...] = ()  # kohya --undesired_tags; `re:<regex>` matches whole labels
    replace: dict[str, str] = Field(default_factory=dict)  # kohya --tag_replacement: label -> what to write
    underscores: bool = False  # spaces in labels written as `_` (kaomoji as they are)
    escape: bool = False  # `(`, `)`, `\` escaped for SD's prompt syntax
    sort: TagOrder = TagOrder.ORDER  # order (as picked), score, alpha
    extension: str = ".txt"  # kohya --caption_extension
    separator: str = Field(", ", min_length=1)  # kohya --caption_separator
    threshold: float | None = None  # `many` categories' bar (a cosine; SigLIP: a probability)
    max_tags: int | None = Field(None, ge=1)  # `many` categories: at most this many picks each
    ranks: bool = False  # (label:0.123)
    spaces: bool = False  # kohya --remove_underscore: `_` in labels written as spaces (a WD tagger's have them)
    # With a WD tagger (`invoke caption --tagger`): `threshold` is the general tags' bar (default 0.35), and
    character_threshold: float = Field(0.85, ge=0, le=1)  # kohya --character_threshold
    character_first: bool = False  # kohya --character_tags_first
    rating: bool = False  # kohya --use_rating_tags: the likeliest rating first

    @field_validator("extension")
    @classmethod
    def _an_extension(cls, value: str) -> str:
        if not re.fullmatch(r"\.[\w.-]{1,20}", value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a file extension: a dot, then letters ('.txt', '.caption')")
        return value

    @model_validator(mode="after")
    def _one_way_for_underscores(self) -> CaptionStyle:
        if self.underscores and self.spaces:
            raise ValueError("underscores (spaces as `_`) and spaces (`_` as spaces) cannot both be on")
        return self

    @field_validator("exclude")
    @classmethod
    def _patterns_compile(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        for entry in entries:
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ValueError(f"{entry!r} is not a regular expression ({exc})") from None
        return entries

    def options(self) -> CaptionOptions:
        """What the interrogator needs to pick and write the labels (sent to a fleet's devices)."""
        from runtime.interrogator import CaptionOptions  # numpy and the runtime: not for loading a config

        plain, patterns = exclusions(self.exclude, patterns=True)
        label_format = LabelFormat(
            separator=self.separator,
            underscores=True if self.underscores else False if self.spaces else None,
            escape=self.escape,
            order=self.sort,
            exclude=plain,
            exclude_patterns=patterns,
            replace=tuple(self.replace.items()),
            prefix=self.prefix,
            suffix=self.suffix,
            ranks=self.ranks,
        )
        return CaptionOptions(
            threshold=self.threshold, max_tags=self.max_tags, format=label_format, every_category=False
        )

    def with_flags(self, **flags: Any) -> CaptionStyle:
        """This style with the command line's flags (those given) in place of its values; comma lists,
        `@file` for --exclude, `a,b;c,d` for --replace."""
        changes: dict[str, Any] = {}
        for name, value in flags.items():
            if value is None or value is False:
                continue
            if name in ("prefix", "suffix"):
                value = tuple(part.strip() for part in str(value).split(",") if part.strip())
            elif name == "exclude":
                value = tuple(_exclude_entries(str(value)))
            elif name == "replace":
                value = _replacements(str(value))
            changes[name] = value
        return CaptionStyle.model_validate({**self.model_dump(), **changes})


def _exclude_entries(text: str) -> list[str]:
    """`a,b` or `@file` (one entry a line: a regex may hold commas)."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"--exclude {text}: {exc.strerror or exc}") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [part.strip() for part in text.split(",") if part.strip()]


def _replacements(text: str) -> dict[str, str]:
    """`a,b;c,d`: a becomes b, c becomes d."""
    pairs = {}
    for pair in (p for p in text.split(";") if p.strip()):
        old, comma, new = pair.partition(",")
        if not comma or not old.strip() or not new.strip():
            raise ValueError(f"--replace {pair!r}: each replacement is `label,new label` (several: `a,b;c,d`)")
        pairs[old.strip()] = new.strip()
    return pairs
