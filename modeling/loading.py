"""Load a CLIP-like model (weights, tokenizer, image processor) from a Hugging Face id, a directory or a
built-in tiny model, with its family (modeling/families.py).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeling.families import Family, family_of
from modeling.model_config import BUILTIN_MODELS, ModelConfig
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # transformers' CLIPModel, SiglipModel or ChineseCLIPModel, in eval mode
    tokenizer: Any  # its fast tokenizer
    image_processor: Any  # its Pillow image processor
    family: Family
    source: str


def resolve_source(model: ModelConfig, cache_dir: Path) -> str:
    """The id or directory to hand to from_pretrained (materializing a built-in model once)."""
    if model.id in BUILTIN_MODELS:
        from modeling.random_models import make_random_model

        recipe, preset = BUILTIN_MODELS[model.id]
        target = cache_dir / model.id.removeprefix("builtin:")
        return str(made_once(target, lambda staging: make_random_model(staging, recipe=recipe, preset=preset)))
    if model.is_local_dir:
        _check_model_dir(Path(model.id))
    return model.id


def made_once(target: Path, make: Callable[[Path], object]) -> Path:
    """`target`, made by `make` in a staging folder beside it and renamed into place the first time: a
    build killed halfway leaves no half-made folder behind."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            make(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory {path} does not exist",
            hint="fix model.id in the config: a Hugging Face id such as openai/clip-vit-base-patch32 or a local dir",
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} is not a model directory (no config.json)", hint="point model.id at a model dir")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except ValueError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    family_of(model_type, str(path))


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


def hub_reachable(repo_id: str, revision: str, probe_file: str = "config.json") -> bool:
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
    if isinstance(try_to_load_from_cache(repo_id, probe_file, revision=revision), str):
        log.warning("%s is unreachable: %s is loaded from the local Hugging Face cache", endpoint.hostname, repo_id)
        return False
    raise ModelLoadError(
        f"cannot load model {repo_id!r}: it is not in the local Hugging Face cache and {endpoint.hostname} "
        "is unreachable",
        hint="connect once so it is downloaded, or point model.id at a local model directory; to try the "
        "pipeline offline: invoke all --config examples/local.yaml (the built-in tiny CLIP)",
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_model(model: ModelConfig, cache_dir: Path) -> LoadedModel:
    """Eager attention (exportable, matches the NPU graph), safetensors only, float32, eval mode."""
    source = resolve_source(model, cache_dir)
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    options: dict[str, Any] = {"revision": model.revision}
    if source == model.id and not model.is_local_dir and not hub_reachable(model.id, model.revision):
        options["local_files_only"] = True
    try:
        family = family_of(AutoConfig.from_pretrained(source, **options).model_type, repr(model.id))
        loaded = AutoModel.from_pretrained(source, attn_implementation="eager", use_safetensors=True, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        processor = AutoImageProcessor.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load model {model.id!r} (revision {model.revision!r}): {first_line}", hint=_load_hint()
        ) from exc
    return LoadedModel(
        model=loaded.eval(), tokenizer=tokenizer, image_processor=processor, family=family, source=source
    )
