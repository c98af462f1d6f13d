"""How picked labels become the text written: one formatter for A1111's `clip` caption and `deepbooru` tags
(the server's interrogate_* and deepbooru_* options), `invoke caption`'s training-set options (kohya-ss
sd-scripts' tagger: --always_first_tags, --undesired_tags, --tag_replacement, --remove_underscore,
--caption_separator, --append_tags) and a fleet's workers, which get it pickled with their task.

Labels are compared as a reader takes them: case and the spelling of a space (` ` or `_`) aside, so
`Long_Hair` is excluded by `long hair`, and appending `long hair` to a file holding `long_hair` adds
nothing. A label without a letter or digit (a kaomoji: `^_^`, `( ͡° ͜ʖ ͡°)`) is written as it is: its
underscores and spaces are its face.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SPECIAL = re.compile(r"([\\()])")  # what SD's prompt syntax reads: escaped as A1111's deepbooru_escape does


class TagOrder(str, enum.Enum):
    """`order`: as picked (the vocabulary's categories in turn, best first in each); `score`: best first
    over all; `alpha`: alphabetical, as written."""

    ORDER = "order"
    SCORE = "score"
    ALPHA = "alpha"


class Existing(str, enum.Enum):
    """What a caption run does with an image's caption file that is already there."""

    SKIP = "skip"  # leave it; the image is not captioned again
    OVERWRITE = "overwrite"
    APPEND = "append"  # its text kept as it is, then the new labels it lacks
    PREPEND = "prepend"  # the new labels it lacks, then its text as it is


def same_label(label: str) -> str:
    """The form two labels are compared in: case and the spelling of a space aside."""
    return " ".join(label.replace("_", " ").lower().split())


def is_kaomoji(label: str) -> bool:
    return not any(character.isalnum() for character in label)


@dataclass(frozen=True)
class LabelFormat:
    separator: str = ", "
    underscores: bool | None = None  # True: spaces written as `_`; False: `_` as spaces; None: as they are
    escape: bool = False  # `(`, `)` and `\` escaped for SD's prompt syntax
    order: TagOrder = TagOrder.ORDER
    exclude: frozenset[str] = frozenset()  # labels never written (compared with same_label)
    exclude_patterns: tuple[re.Pattern[str], ...] = ()  # a label that one matches whole is never written
    replace: tuple[tuple[str, str], ...] = ()  # (label, what to write instead)
    prefix: tuple[str, ...] = ()  # written first, as given (a trigger word)
    suffix: tuple[str, ...] = ()  # written last, as given
    ranks: bool = False  # (label:0.123), the score beside each picked label

    def spell(self, label: str) -> str:
        """A label as written: underscores, then escapes."""
        if self.underscores is not None and not is_kaomoji(label):
            label = label.replace(" ", "_") if self.underscores else label.replace("_", " ")
        return _SPECIAL.sub(r"\\\1", label) if self.escape else label

    def words(self, picks: Iterable[tuple[str, float]]) -> list[str]:
        """The written labels of `picks` ((label, score), in the order picked): replaced, excluded, each once,
        ordered, between the prefix and the suffix."""
        replacements = {same_label(old): new for old, new in self.replace}
        fixed = {same_label(tag) for tag in (*self.prefix, *self.suffix)}
        seen: set[str] = set()
        kept: list[tuple[str, float]] = []
        for label, score in picks:
            label = replacements.get(same_label(label), label)
            key = same_label(label)
            if key in seen or key in fixed or self._excluded(label):
                continue
            seen.add(key)
            kept.append((label, score))
        if self.order is TagOrder.SCORE:
            kept.sort(key=lambda pick: -pick[1])
        written = [(self.spell(label), score) for label, score in kept]
        if self.order is TagOrder.ALPHA:
            written.sort(key=lambda pick: pick[0])
        body = [f"({text}:{score:.3f})" if self.ranks else text for text, score in written]
        return [*self.prefix, *body, *self.suffix]

    def format(self, picks: Iterable[tuple[str, float]]) -> str:
        return self.separator.join(self.words(picks))

    def merge(self, existing: str, caption: str, how: Existing) -> str:
        """The text for a caption file that holds `existing`, given the new `caption` (this format's): with
        APPEND or PREPEND the file's parts stay as they are, in place, and only the labels it lacks are added
        (the prefix still first, the suffix last); else the new caption alone."""
        if how not in (Existing.APPEND, Existing.PREPEND) or not existing.strip():
            return caption
        words, parts = self._split(caption), self._split(existing)
        have = {same_label(_unranked(part)) for part in parts}
        new = [word for word in words if same_label(_unranked(word)) not in have]
        prefix = [word for word in new if word in self.prefix]
        suffix = [word for word in new if word in self.suffix and word not in prefix]
        body = [word for word in new if word not in prefix and word not in suffix]
        ordered = [*parts, *body] if how is Existing.APPEND else [*body, *parts]
        return self.separator.join([*prefix, *ordered, *suffix])

    def labels(self, caption: str) -> list[str]:
        """A written caption's labels, compared as same_label does (ranks dropped): for tag statistics."""
        return [same_label(_unranked(part)) for part in self._split(caption)]

    def _split(self, text: str) -> list[str]:
        parts = text.strip().split(self.separator.strip() or self.separator)
        return [part.strip() for part in parts if part.strip()]

    def _excluded(self, label: str) -> bool:
        if same_label(label) in self.exclude:
            return True
        written = self.spell(label)
        return any(p.fullmatch(label) or p.fullmatch(written) for p in self.exclude_patterns)


PLAIN = LabelFormat()  # A1111's `clip` caption
DEEPBOORU = LabelFormat(underscores=False, escape=True, order=TagOrder.ALPHA)  # its deepbooru_* defaults


def exclusions(entries: Iterable[str], patterns: bool = False) -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
    """Exclude entries as LabelFormat takes them; with `patterns`, an entry `re:<regex>` matches whole labels
    (the command line's; the server's options take plain labels only: a client's regex could take forever)."""
    plain, compiled = set(), []
    for entry in (e.strip() for e in entries):
        if patterns and entry.startswith("re:"):
            compiled.append(re.compile(entry[3:]))
        elif entry:
            plain.add(same_label(entry))
    return frozenset(plain), tuple(compiled)


def _unranked(word: str) -> str:
    """`(label:0.123)` -> `label`: an existing file written with ranks compares by its labels."""
    match = re.fullmatch(r"\((.*):-?\d+(\.\d+)?\)", word)
    return match.group(1) if match else word
