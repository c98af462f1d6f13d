"""An interrogation as every caller shows it, as plain data: the service's detailed endpoint, `invoke caption`'s
JSON lines and the embedding helpers. Core, not HTTP: the server's schemas derive from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from typing_extensions import Self

if TYPE_CHECKING:
    from runtime import interrogator
    from runtime.interrogator import Interrogation


class Pick(BaseModel):
    label: str
    score: float  # cosine
    probability: float  # the model's (SigLIP: sigmoid with its scale and bias; CLIP: softmax over the category)


class CategoryAnswer(BaseModel):
    name: str
    mode: str
    labels: int  # the category's labels in the tables, after embed-vocab's merges
    picks: list[Pick]
    top: list[Pick]


class InterrogationAnswer(BaseModel):
    """An interrogation as every caller shows it: the detailed endpoint, `invoke caption`'s JSON lines,
    the embedding helpers."""

    caption: str
    categories: list[CategoryAnswer]
    timings_ms: dict[str, float]

    @classmethod
    def of(cls, result: Interrogation, **extra: Any) -> Self:
        def picks(found: tuple[interrogator.Pick, ...]) -> list[Pick]:
            return [Pick(label=p.label, score=round(p.score, 4), probability=round(p.probability, 4)) for p in found]

        categories = [
            CategoryAnswer(name=c.name, mode=c.mode.value, labels=c.labels, picks=picks(c.picks), top=picks(c.top))
            for c in result.categories
        ]
        timings = {stage: round(ms, 2) for stage, ms in result.timings_ms.items()}
        return cls(caption=result.caption, categories=categories, timings_ms=timings, **extra)
