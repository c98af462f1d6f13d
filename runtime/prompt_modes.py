"""clip-interrogator's prompt modes (fast, classic, best, negative) and its analysis, on the precomputed label
tables and, for `best` and `negative`, the text encoder loaded on demand.

Follows pharmapsychotic/clip-interrogator 0.6.0 (`interrogate_fast`, `interrogate_classic`,
`interrogate_negative`, `interrogate` = best, `chain`, `_truncate_to_fit`), with three differences, each said
where it happens: the prompt starts from the best label of a caption category (there is no BLIP captioner
here); labels are ranked exactly over a whole category (its `LabelTable.rank` keeps a share of each 2048-label
chunk past 2048 labels); and a chain step re-encodes only the `chain_candidates` phrases whose own cosine
is best (it encodes every remaining phrase, ~2000, at each of 32 steps), within `max_text_encodes`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import RuntimeErrorBase
from runtime.interrogator import Interrogator, Scores
from runtime.label_tables import CategoryTable

# clip-interrogator's tables, by the category names of vocab/clip-interrogator.yaml, in the order its
# `_merge_tables` joins them for fast and best.
MERGED = ("artist", "flavor", "medium", "movement", "trending")
ANALYZED = ("medium", "artist", "movement", "trending", "flavor")  # the ext's analyze answer, 5 each
ANALYZE_TOP = 5


class PromptMode(str, enum.Enum):
    FAST = "fast"  # the caption and the best labels of every table: no text encode
    CLASSIC = "classic"  # caption, medium, artist, trending, movement and 3 flavors: no text encode
    BEST = "best"  # a chain of labels, each kept while it makes the prompt closer to the image
    NEGATIVE = "negative"  # a chain of the labels furthest from the image


class PromptError(RuntimeErrorBase):
    """The vocabulary lacks what a mode needs."""


@dataclass(frozen=True)
class PromptSettings:
    caption_category: str = "subject"  # the prompt starts from its best label (clip-interrogator: BLIP)
    max_flavors: int = 32  # clip-interrogator's max_flavors: fast's labels, best's and negative's chain length
    min_flavors: int = 8  # best: labels chained even when they do not help
    classic_flavors: int = 3  # classic's flavors
    intermediate: int = 2048  # flavor_intermediate_count: the labels a chain picks from
    chain_candidates: int = 32  # phrases re-encoded per chain step, the best by their own cosine
    max_text_encodes: int = 2048  # per request; a chain stops when the next step would pass it


@dataclass
class PromptResult:
    prompt: str
    text_encodes: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


class PromptBuilder:
    """The modes over one interrogator (its image encoder, tables, and the text encoder on demand)."""

    def __init__(self, interrogator: Interrogator, settings: PromptSettings | None = None) -> None:
        self.interrogator = interrogator
        self.settings = settings or PromptSettings()
        clip = interrogator.clip
        self.tokenizer = clip.tokenizer
        self.tables = {c.name: c for c in interrogator.tables.categories}

    def require(self, mode: PromptMode | None) -> None:
        """Refuse at once, naming what is missing, when the vocabulary cannot serve `mode` (None: analyze)."""
        needed = list(ANALYZED if mode is None else MERGED)
        if mode is not None and mode is not PromptMode.NEGATIVE:
            needed.append(self.settings.caption_category)
        if mode is PromptMode.NEGATIVE:
            needed = ["flavor", "negative"]
        missing = [name for name in needed if name not in self.tables]
        if missing:
            raise PromptError(
                f"the label tables have no {', '.join(missing)} categor{'y' if len(missing) == 1 else 'ies'}, "
                f"which {'analyze' if mode is None else f'the {mode.value} mode'} needs: run embed-vocab with "
                "a vocabulary that has them (vocab/default.yaml, vocab/clip-interrogator.yaml: "
                "stages.embed-vocab.vocabulary) and fetch"
            )

    def prompt(self, scores: Scores, mode: PromptMode, wait: float | None = None) -> PromptResult:
        """`scores`: the image against every label (Interrogator.score); `wait` bounds each NPU wait."""
        self.require(mode)
        run = _Run(self, scores, wait)
        started = time.perf_counter()
        if mode is PromptMode.FAST:
            text = run.fast(run.caption(), self.settings.max_flavors)
        elif mode is PromptMode.CLASSIC:
            text = run.classic(run.caption(), self.settings.classic_flavors)
        elif mode is PromptMode.NEGATIVE:
            text = run.negative()
        else:
            text = run.best()
        total = (time.perf_counter() - started) * 1e3
        timings = {"prompt": total, "text_encode": run.encode_ms}
        return PromptResult(text, run.encodes, timings)

    def analyze(self, scores: Scores) -> dict[str, dict[str, float]]:
        """The ext's analyze answer: each table's 5 best labels with their cosine (the ext re-encodes each
        label alone; that is its table row here)."""
        self.require(None)
        return {
            name: {p.label: round(p.score, 4) for p in top_picks(scores, [self.tables[name]], ANALYZE_TOP)}
            for name in ANALYZED
        }


@dataclass(frozen=True)
class Ranked:
    label: str
    score: float


def top_picks(scores: Scores, categories: list[CategoryTable], k: int, reverse: bool = False) -> list[Ranked]:
    """The k labels with the highest cosine (lowest with `reverse`) over several categories, exactly: each
    category's coarse scores rule out what cannot be among its k, the rest is rescored in float."""
    found: list[Ranked] = []
    for category in categories:
        block = scores.coarse(category)
        signed = -block if reverse else block
        take = min(k, len(block))
        cutoff = float(np.partition(signed, len(block) - take)[len(block) - take]) - 2 * scores.bound(category)
        candidates = np.flatnonzero(signed >= cutoff)
        exact = scores.tables.exact_scores(category, candidates, scores.vector)
        found += [Ranked(category.labels[i], float(s)) for i, s in zip(candidates, exact, strict=True)]
    found.sort(key=lambda r: r.score, reverse=not reverse)
    return found[:k]


class _Run:
    """One request: the image vector, a cache of prompt similarities, the encode count and budget."""

    def __init__(self, builder: PromptBuilder, scores: Scores, wait: float | None) -> None:
        self.builder = builder
        self.settings = builder.settings
        self.vector = scores.vector
        self.wait = wait
        self.scores = scores
        self.similarities: dict[str, float] = {}
        self.encodes = 0
        self.encode_ms = 0.0

    def table(self, name: str) -> CategoryTable:
        return self.builder.tables[name]

    def top(self, names: tuple[str, ...] | list[str], k: int, reverse: bool = False) -> list[str]:
        return [r.label for r in top_picks(self.scores, [self.table(n) for n in names], k, reverse)]

    def caption(self) -> str:
        """Instead of BLIP's caption: the caption category's best label in its template ("a photo of a cat")."""
        category = self.table(self.settings.caption_category)
        return category.prompt(self.top([category.name], 1)[0])

    def fast(self, caption: str, count: int) -> str:
        return self.truncate_to_fit(caption + ", " + ", ".join(self.top(MERGED, count)))

    def classic(self, caption: str, flavors: int) -> str:
        medium, artist, trending, movement = (self.top([n], 1)[0] for n in ("medium", "artist", "trending", "movement"))
        flaves = ", ".join(self.top(["flavor"], flavors))
        if caption.startswith(medium):
            return self.truncate_to_fit(f"{caption} {artist}, {trending}, {movement}, {flaves}")
        return self.truncate_to_fit(f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}")

    def negative(self) -> str:
        phrases = self.top(["flavor"], self.settings.intermediate, reverse=True) + list(self.table("negative").labels)
        return self.chain(phrases, max_count=self.settings.max_flavors, reverse=True)

    def best(self) -> str:
        caption = self.caption()
        phrases = self.top(MERGED, self.settings.intermediate)
        chained = self.chain(
            phrases,
            caption,
            self.similarity([caption])[0],
            min_count=self.settings.min_flavors,
            max_count=self.settings.max_flavors,
        )
        fast = self.fast(caption, self.settings.max_flavors)
        classic = self.classic(caption, self.settings.max_flavors)
        candidates = [caption, classic, fast, chained]
        return candidates[int(np.argmax(self.similarity(candidates)))]

    def chain(
        self,
        phrases: list[str],
        best_prompt: str = "",
        best_sim: float = 0.0,
        *,
        min_count: int = 8,
        max_count: int = 32,
        reverse: bool = False,
    ) -> str:
        """clip-interrogator's `chain`, step for step (its first best_sim is not negated with `reverse`
        either). Each step considers the `chain_candidates` remaining phrases whose own cosine ranks best."""
        remaining = dict.fromkeys(phrases)  # its set, in a fixed order
        own = self._own_cosines(list(remaining))

        def rank_top(prefix: str) -> tuple[str, float] | None:
            """clip-interrogator's rank_top over `prefix` + each candidate: the best (with `reverse`, the
            furthest) and its signed similarity; None when the budget has no room for the step."""
            ranked = sorted(remaining, key=lambda p: own[p], reverse=not reverse)[: self.settings.chain_candidates]
            prompts = [prefix + p for p in ranked]
            if not prompts or self.encodes + len(prompts) > self.settings.max_text_encodes:
                return None  # the request's budget: what is chained so far stands
            sims = np.asarray(self.similarity(prompts))
            pick = int(np.argmin(sims) if reverse else np.argmax(sims))
            return ranked[pick], float(-sims[pick] if reverse else sims[pick])

        if not best_prompt:
            first = rank_top("")
            if first is None:
                return ""
            best_prompt = first[0]
            best_sim = self.similarity([best_prompt])[0]  # not negated, as clip-interrogator has it
            del remaining[best_prompt]
        current, current_sim = best_prompt, best_sim
        for index in range(max_count):
            step = rank_top(f"{current}, ")
            if step is None:
                break
            flavor, sim = step
            prompt = f"{current}, {flavor}"
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if not (sim > current_sim or index < min_count):
                break
            current, current_sim = prompt, sim
            if self.fills_context(current):
                break
            del remaining[flavor]
        return best_prompt

    def _own_cosines(self, phrases: list[str]) -> dict[str, float]:
        """Each phrase's cosine with the image, from the tables (a phrase is a label of one of them)."""
        cosines: dict[str, float] = {}
        for category in self.builder.interrogator.tables.categories:
            index = {label: i for i, label in enumerate(category.labels)}
            rows = [index[p] for p in phrases if p in index and p not in cosines]
            if rows:
                exact = self.scores.tables.exact_scores(category, np.asarray(rows), self.vector)
                cosines |= {category.labels[r]: float(s) for r, s in zip(rows, exact, strict=True)}
        return cosines

    def similarity(self, texts: list[str]) -> list[float]:
        """Each text's cosine with the image through the text encoder; a text already encoded in this
        request is not encoded again."""
        new = list(dict.fromkeys(t for t in texts if t not in self.similarities))
        if new:
            started = time.perf_counter()
            embeddings = self.builder.interrogator.clip.encode_texts(new, self.wait)
            self.encode_ms += (time.perf_counter() - started) * 1e3
            self.encodes += len(new)
            norms = np.linalg.norm(embeddings, axis=1) + 1e-12
            for text, sim in zip(new, (embeddings @ self.vector) / norms, strict=True):
                self.similarities[text] = float(sim)
        return [self.similarities[t] for t in texts]

    def fills_context(self, text: str) -> bool:
        """clip-interrogator's `_prompt_at_max_len`: the text's tokens reach the last position."""
        return bool(self.builder.tokenizer.fills_context([text])[0])

    def truncate_to_fit(self, text: str) -> str:
        """clip-interrogator's `_truncate_to_fit`, as written (it tests `text + part`, without the comma)."""
        parts = text.split(", ")
        kept = parts[0]
        for part in parts[1:]:
            if self.fills_context(kept + part):
                break
            kept += ", " + part
        return kept
