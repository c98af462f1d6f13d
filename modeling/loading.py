"""Load CLIP (weights, tokenizer, preprocessing config) from a Hugging Face id, a directory or the tiny CLIP.

Every failure a user can cause (typo, offline, wrong directory) becomes a one-line ModelLoadError.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeling.model_config import BUILTIN_MODELS, ModelConfig
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LoadedClip:
    model: Any  # transformers.CLIPModel, in eval mode
    tokenizer: Any  # transformers.CLIPTokenizer
    image_processor: Any  # transformers CLIP image processor
    source: str


def resolve_source(model: ModelConfig, cache_dir: Path) -> str:
    """The id or directory to hand to from_pretrained (materializing a built-in model once)."""
    if model.id in BUILTIN_MODELS:
        from modeling.random_clip import make_random_clip

        preset = BUILTIN_MODELS[model.id]
        target = cache_dir / f"{preset}-clip-{model.image_size}-{model.context_length}"
        if not target.is_dir():
            cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{preset}-", dir=cache_dir))
            try:
                make_random_clip(
                    staging, image_size=model.image_size, context_length=model.context_length, preset=preset
                )
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return str(target)
    if model.is_local_dir:
        _check_clip_dir(Path(model.id))
    return model.id


def _check_clip_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory {path} does not exist",
            hint="fix model.id in the config: a Hugging Face id such as openai/clip-vit-base-patch32 or a local dir",
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} is not a model directory (no config.json)", hint="point model.id at a CLIP dir")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except ValueError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if model_type != "clip":
        raise ModelLoadError(
            f"{path} holds a {model_type!r} model, not a CLIP model (config.json model_type must be 'clip')",
            hint="point model.id at a CLIP checkpoint such as openai/clip-vit-base-patch32",
        )


def _load_hint() -> str:
    """What to try next; offline mode is only suggested when it is not already on."""
    if _offline():
        return (
            "HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched: download the model "
            "once with network access, or point model.id at a local model directory"
        )
    return (
        "check the id for typos and the network; offline, point model.id at a local model directory "
        "or set HF_HUB_OFFLINE=1 to use the local cache"
    )


def _hub_reachable(model: ModelConfig) -> bool:
    """Whether the Hugging Face hub answers, asked once with a short connect: offline, the hub client
    would retry every file with backoff (ten lines and half a minute) before failing. A model already in
    the local cache then loads from there; one that is not fails at once, saying what to do."""
    if _offline():
        return False
    from huggingface_hub import constants, try_to_load_from_cache

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        pass
    if isinstance(try_to_load_from_cache(model.id, "config.json", revision=model.revision), str):
        log.warning("%s is unreachable: %s is loaded from the local Hugging Face cache", endpoint.hostname, model.id)
        return False
    raise ModelLoadError(
        f"cannot load model {model.id!r}: it is not in the local Hugging Face cache and {endpoint.hostname} "
        "is unreachable",
        hint="connect once so it is downloaded, or point model.id at a local model directory; to try the "
        "pipeline offline: invoke all --config examples/local.yaml (the built-in tiny CLIP)",
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_clip(model: ModelConfig, cache_dir: Path) -> LoadedClip:
    """Eager attention (exportable, matches the NPU graph), safetensors only, float32, eval mode."""
    source = resolve_source(model, cache_dir)
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    options: dict[str, Any] = {"revision": model.revision}
    if source == model.id and not model.is_local_dir and not _hub_reachable(model):
        options["local_files_only"] = True
    try:
        clip = CLIPModel.from_pretrained(source, attn_implementation="eager", use_safetensors=True, **options).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        processor = AutoImageProcessor.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load model {model.id!r} (revision {model.revision!r}): {first_line}", hint=_load_hint()
        ) from exc
    if clip.config.model_type != "clip":
        raise ModelLoadError(f"{model.id!r} is a {clip.config.model_type!r} model, not CLIP")
    return LoadedClip(model=clip, tokenizer=tokenizer, image_processor=processor, source=source)


def check_input_sizes(model: ModelConfig, loaded: LoadedClip) -> None:
    """model.image_size and context_length must be the loaded model's: an export at another size would
    not fail, it would quietly compute something else."""
    vision, text = loaded.model.config.vision_config, loaded.model.config.text_config
    if vision.image_size != model.image_size:
        raise ModelLoadError(
            f"model.image_size is {model.image_size} but the model was trained at {vision.image_size}",
            hint=f"set model.image_size: {vision.image_size}",
        )
    if model.context_length > text.max_position_embeddings:
        raise ModelLoadError(
            f"model.context_length {model.context_length} exceeds the model's {text.max_position_embeddings}",
            hint=f"set model.context_length: {text.max_position_embeddings}",
        )
