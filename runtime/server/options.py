"""A1111's /sdapi/v1/options: the interrogate_* and deepbooru_* keys that shape the answers, plus the keys
clients probe, with values that make sense for a CLIP-only server. Kept in a JSON file (as A1111's
config.json) so settings survive a restart.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import OptionRefused, SettingsError
from runtime.interrogator import CaptionOptions, TagOptions
from runtime.label_format import LabelFormat, TagOrder, exclusions
from runtime.server.errors import quoted

# Bounds on every option: a POST must not be able to grow the saved file or slow every request. (Strings
# that UTF-8 cannot hold, such as a lone surrogate from JSON's \ud800, pydantic refuses as it parses.)
MAX_TEXT = 4096  # characters of a text option (deepbooru_filter_tags holds a comma-separated list)
MAX_NAME = 256
MAX_ITEMS = 64  # categories to skip: more than any vocabulary has


class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    interrogate_return_ranks: bool = False
    # A1111 defaults to 1500 lines because it encodes every label per request; ours are precomputed.
    interrogate_clip_dict_limit: int = Field(
        0, ge=0, le=10_000_000, description="only each category's first N labels; 0: all"
    )
    interrogate_clip_skip_categories: list[Annotated[str, Field(max_length=MAX_NAME)]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    interrogate_deepbooru_score_threshold: float = Field(0.5, ge=0, le=1)
    deepbooru_sort_alpha: bool = True
    deepbooru_use_spaces: bool = True
    deepbooru_escape: bool = True
    deepbooru_filter_tags: str = Field("", max_length=MAX_TEXT)
    # Accepted for clients that set them; no BLIP here, and the models always stay loaded.
    interrogate_keep_models_in_memory: bool = True
    interrogate_clip_num_beams: int = Field(1, ge=1, le=64)
    interrogate_clip_min_length: int = Field(24, ge=1, le=1024)
    interrogate_clip_max_length: int = Field(48, ge=1, le=1024)
    # Set when the server starts (--allow-image-urls, --allow-local-urls); read-only here.
    api_enable_requests: bool = False
    api_forbid_local_requests: bool = True
    # What clients probe on an A1111 server; there is no Stable Diffusion model here.
    sd_model_checkpoint: str | None = Field(None, max_length=MAX_NAME)
    sd_checkpoint_hash: str | None = Field(None, max_length=MAX_NAME)
    samples_format: str = Field("png", max_length=16)
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12)


READ_ONLY = {
    "api_enable_requests": "--allow-image-urls",
    "api_forbid_local_requests": "--allow-local-urls",
}


class OptionsStore:
    def __init__(self, path: Path | None, categories: list[str], fixed: dict[str, Any]) -> None:
        self.path = path
        self.categories = categories
        self._lock = threading.Lock()
        self._apply(Options.model_validate({**_read_saved(path), **fixed}))

    def get(self) -> dict[str, Any]:
        return self._options.model_dump()

    def _apply(self, options: Options) -> None:
        """Options and what requests read from them, parsed once here rather than on every request."""
        self._options = options
        self._caption = CaptionOptions(
            skip=frozenset(options.interrogate_clip_skip_categories),
            dict_limit=options.interrogate_clip_dict_limit,
            format=LabelFormat(ranks=options.interrogate_return_ranks),
        )
        excluded, _ = exclusions(options.deepbooru_filter_tags.split(","))  # plain labels: no client regex
        self._tags = TagOptions(
            threshold=options.interrogate_deepbooru_score_threshold,
            format=LabelFormat(
                underscores=not options.deepbooru_use_spaces,
                escape=options.deepbooru_escape,
                order=TagOrder.ALPHA if options.deepbooru_sort_alpha else TagOrder.SCORE,
                exclude=excluded,
                ranks=options.interrogate_return_ranks,
            ),
        )

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a POST body: unknown keys are ignored (as A1111 does), known ones validated all or none."""
        with self._lock:
            current = self._options.model_dump()
            for key, flag in READ_ONLY.items():
                if key in changes and changes[key] != current[key]:
                    raise OptionRefused(f"{key} is set when the server starts ({flag}); it cannot be changed here")
            known = {k: v for k, v in changes.items() if k in Options.model_fields}
            try:
                updated = Options.model_validate({**current, **known})
            except ValidationError as exc:
                detail = [{"loc": e["loc"], "msg": _printable(e["msg"])} for e in exc.errors()]
                raise OptionRefused(detail) from exc
            unknown = sorted(set(updated.interrogate_clip_skip_categories) - set(self.categories))
            if unknown:
                more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
                raise OptionRefused(
                    f"interrogate_clip_skip_categories: unknown {', '.join(map(quoted, unknown[:5]))}{more}; "
                    f"the categories are {', '.join(self.categories)}",
                )
            if self.path:  # saved first: a change that cannot be kept is not applied either
                try:
                    _write_atomic(self.path, updated.model_dump(exclude=set(READ_ONLY)))
                except OSError as exc:
                    raise SettingsError(
                        f"could not save the options to {self.path} ({exc.strerror}); nothing was changed"
                    ) from exc
            self._apply(updated)

    def caption_options(self) -> CaptionOptions:
        return self._caption

    def tag_options(self) -> TagOptions:
        return self._tags


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _read_saved(path: Path | None) -> dict[str, Any]:
    """Saved options, minus the read-only ones; a broken file is named, with what to do."""
    if path is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        Options.model_validate(saved)
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        raise SettingsError(f"options file {path} is unreadable ({exc}); fix it or delete it for defaults") from exc
    if not isinstance(saved, dict):
        raise SettingsError(f"options file {path} is not a JSON object; fix it or delete it for defaults")
    return {k: v for k, v in saved.items() if k not in READ_ONLY}


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(f.name, path)
