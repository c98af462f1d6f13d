"""Where a tagger's published files come from: a built-in tiny tagger made once in the cache, a local folder,
or the Hugging Face hub (SmilingWolf publishes each v3 tagger as a repository holding `model.onnx` and
`selected_tags.csv`: that pair is all any tool that runs them reads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modeling.loading import hub_reachable, made_once
from modeling.tagger_config import BUILTIN_TAGGERS, TaggerSource
from pipeline.errors import ModelLoadError

PUBLISHED_FILES = ("model.onnx", "selected_tags.csv")


@dataclass(frozen=True)
class PublishedTagger:
    model: Path  # model.onnx as published
    tags: Path  # selected_tags.csv


def published_tagger(tagger: TaggerSource, cache_dir: Path) -> PublishedTagger:
    """The tagger's model.onnx and selected_tags.csv."""
    if tagger.id in BUILTIN_TAGGERS:
        from modeling.wd_tagger import write_random_tagger

        family = BUILTIN_TAGGERS[tagger.id]
        folder = made_once(cache_dir / tagger.id.removeprefix("builtin:"), lambda out: write_random_tagger(out, family))
        return PublishedTagger(*(folder / name for name in PUBLISHED_FILES))
    if tagger.is_local_dir:
        folder = Path(tagger.id)
        missing = [name for name in PUBLISHED_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(
                f"tagger folder {folder} has no {' or '.join(missing)}",
                hint="tagger.id: a folder holding a WD tagger's model.onnx and selected_tags.csv, a Hugging Face "
                "id such as SmilingWolf/wd-vit-tagger-v3, or builtin:tiny-wd-tagger",
            )
        return PublishedTagger(*(folder / name for name in PUBLISHED_FILES))
    return _from_hub(tagger)


def _from_hub(tagger: TaggerSource) -> PublishedTagger:
    """Both files through the hub's own cache (downloaded once)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_only = not hub_reachable(tagger.id, tagger.revision, PUBLISHED_FILES[0])
    try:
        paths = {
            name: hf_hub_download(tagger.id, name, revision=tagger.revision, local_files_only=local_only)
            for name in PUBLISHED_FILES
        }
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"cannot load tagger {tagger.id!r} (revision {tagger.revision!r}): {first_line}",
            hint="check the id (SmilingWolf/wd-vit-tagger-v3, wd-swinv2-tagger-v3, wd-convnext-tagger-v3 ...); "
            "offline, point tagger.id at a folder holding model.onnx and selected_tags.csv",
        ) from exc
    return PublishedTagger(*(Path(paths[name]) for name in PUBLISHED_FILES))
