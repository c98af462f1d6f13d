"""`model:` in pipeline.yaml: which model to build (a Hugging Face id, a local directory, or a built-in one).
Only `id` is needed: sizes come from the model itself; the other keys are optional overrides."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, model_validator

from pipeline.config import Strict

BUILTIN_TINY_CLIP = "builtin:tiny-clip"
# Built-in models made on the fly with random weights: id -> (recipe, size preset); see modeling/random_models.py.
BUILTIN_MODELS = {
    BUILTIN_TINY_CLIP: ("clip", "tiny"),
    "builtin:tiny-siglip": ("siglip", "tiny"),
    "builtin:tiny-siglip-sentencepiece": ("siglip_sentencepiece", "tiny"),
    "builtin:tiny-chinese-clip": ("chinese_clip", "tiny"),
    "builtin:random-vit-b-32": ("clip", "vit-b-32"),
}
DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"


class ModelConfig(Strict):
    """Which model to build: a Hugging Face id, a local directory, or a built-in tiny model."""

    id: str = DEFAULT_MODEL_ID
    revision: str = "main"
    image_size: int | None = Field(None, ge=32, le=1024)  # checked against the model's; None: the model's
    context_length: int | None = Field(None, ge=8, le=512)  # None: the model's trained text length

    @model_validator(mode="after")
    def _resolve_local_dir(self, info: ValidationInfo) -> ModelConfig:
        if self.id.startswith("builtin:"):
            if self.id not in BUILTIN_MODELS:
                raise ValueError(f"unknown built-in model {self.id!r}; built-in: {', '.join(BUILTIN_MODELS)}")
            return self
        base = Path((info.context or {}).get("base_dir", "."))
        candidate = (base / Path(self.id).expanduser()).resolve()
        looks_local = self.id.startswith((".", "/", "~")) or candidate.exists()
        if looks_local:
            object.__setattr__(self, "id", str(candidate))
        return self

    @property
    def is_local_dir(self) -> bool:
        return Path(self.id).is_absolute()
