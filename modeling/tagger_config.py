"""`tagger:` in pipeline.yaml: a WD booru tagger built for the same device beside the CLIP model (issue 39).

`id` takes the forms `model:` takes: a Hugging Face id (SmilingWolf/wd-vit-tagger-v3: its model.onnx and
selected_tags.csv are what is read), a local folder holding those two files, or a built-in tiny tagger with
random weights (no network). The bars are the WD taggers' customary ones; the smoke test measures the
device's tags against the float model's at them.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationInfo, model_validator

from pipeline.config import Strict

# Built-in taggers made on the fly with random weights: id -> backbone family (modeling/wd_tagger.py).
BUILTIN_TAGGERS = {
    "builtin:tiny-wd-tagger": "vit",
    "builtin:tiny-wd-swinv2-tagger": "swinv2",
    "builtin:tiny-wd-convnext-tagger": "convnext",
}
TAGGER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class TaggerSource(Strict):
    """Which tagger: what tagger-export reads and what its identity is."""

    id: str
    revision: str = "main"
    # What /tagger/v1/interrogators lists and requests name; None: the id's last part (wd-vit-tagger-v3).
    name: str | None = Field(None, pattern=TAGGER_NAME)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> TaggerSource:
        if self.id.startswith("builtin:"):
            if self.id not in BUILTIN_TAGGERS:
                raise ValueError(f"unknown built-in tagger {self.id!r}; built-in: {', '.join(BUILTIN_TAGGERS)}")
        else:
            base = Path((info.context or {}).get("base_dir", "."))
            candidate = (base / Path(self.id).expanduser()).resolve()
            if self.id.startswith((".", "/", "~")) or candidate.exists():
                object.__setattr__(self, "id", str(candidate))
        if self.name is None:
            last = re.sub(r"[^A-Za-z0-9_.-]", "-", self.id.rstrip("/").rsplit("/", 1)[-1].removeprefix("builtin:"))
            object.__setattr__(self, "name", last.lstrip("-._")[:63] or "tagger")
        return self

    @property
    def is_local_dir(self) -> bool:
        return Path(self.id).is_absolute()


class TaggerConfig(TaggerSource):
    """`tagger:`: the tagger, and the bars the device's tags are measured at."""

    threshold: float = Field(0.35, ge=0, le=1)  # general tags (the taggers' custom)
    character_threshold: float = Field(0.85, ge=0, le=1)
    # smoke-test: the device's tags above the bars against the float model's, on verify's photos: the mean
    # Jaccard overlap of the two sets must reach this (1.0: the same set on every photo).
    min_agreement: float = Field(0.9, ge=0, le=1)

    @property
    def source(self) -> TaggerSource:
        """The tagger alone (already validated), without the bars."""
        return TaggerSource.model_construct(**self.model_dump(include=set(TaggerSource.model_fields)))
