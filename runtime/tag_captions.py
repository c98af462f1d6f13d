"""A training set's captions from a WD tagger (`invoke caption --tagger DIR`): the booru tags kohya-ss
sd-scripts' tag_images_by_wd14_tagger.py writes, with its options (general and character bars, character
tags first, the likeliest rating first) and the caption style's (exclusions, replacements, underscores or
spaces, prefix, order), through the same pipeline and writer as CLIP's captions (runtime/captioning.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.caption_style import CaptionStyle
from runtime.captioning import Answer
from runtime.label_format import LabelFormat
from runtime.preprocess import open_image
from runtime.tagger import Tagger, TagThresholds

GENERAL_THRESHOLD = 0.35  # kohya's --thresh default, the WD taggers' customary bar


@dataclass(frozen=True)
class TagTask:
    """answer_all's task for a tagger: prepare as the wd-tagger Space does, run on the NPU, read the tags."""

    tagger: Tagger
    thresholds: TagThresholds
    format: LabelFormat
    character_first: bool = False
    rating: bool = False

    @classmethod
    def of(cls, tagger: Tagger, style: CaptionStyle) -> TagTask:
        general = GENERAL_THRESHOLD if style.threshold is None else style.threshold
        thresholds = TagThresholds(general, style.character_threshold)
        return cls(tagger, thresholds, style.options().format, style.character_first, style.rating)

    def prepare(self, source: Path | bytes) -> np.ndarray:
        return self.tagger.pixels(open_image(source))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.tagger.probabilities(pixels)

    def finish_all(self, encoded: list[np.ndarray | Exception]) -> list[Answer | Exception]:
        return [item if isinstance(item, Exception) else self._answer(item) for item in encoded]

    def _answer(self, probabilities: np.ndarray) -> Answer:
        answer = self.tagger.tags.answer(probabilities, self.thresholds)
        general, character = list(answer.general.items()), list(answer.character.items())
        picks = [*character, *general] if self.character_first else [*general, *character]
        if self.rating and answer.ratings:
            picks.insert(0, max(answer.ratings.items(), key=lambda item: item[1]))
        record = {"tagger": self.tagger.name, "ratings": answer.ratings, "general": answer.general}
        return self.format.format(picks), {**record, "character": answer.character}
