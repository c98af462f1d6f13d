"""Interrogation inside a program the user already runs (an SD server on the same NPU, a Flask app).

`load_interrogator` opens the fetched models once, sharing the host program's NPU lock object (its
`unet_lock`) and/or a lock file, and unloading the image encoder when idle; `caption` and `interrogate`
take image bytes, base64 or a data URL and answer as the service does. For a FastAPI app,
`runtime.server.app.include_interrogation` puts the very endpoints on it. README shows both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.answers import InterrogationAnswer
from runtime.images import ImagePolicy, decode_image, open_image_bytes
from runtime.interrogator import CaptionOptions, Interrogation, Interrogator, TagOptions
from runtime.npu import HostLock, IdleUnloader, NpuLock
from runtime.opening import OpenOptions, open_interrogator


def load_interrogator(
    models: Path,
    *,
    host_lock: HostLock | None = None,
    lock_file: Path | None = None,
    unload_after: float | None = None,
    provider: str | None = None,
    device_id: int = 0,
) -> Interrogator:
    """The image encoder and label tables of a models dir as `invoke fetch` lays it out. Every NPU call
    holds `host_lock` (if given) and an exclusive flock on `lock_file` (if given); with `unload_after`,
    the encoder leaves the NPU after that many idle seconds and comes back on the next request."""
    options = OpenOptions(NpuLock(lock_file, host_lock), provider, device_id, unload_after)
    interrogator = open_interrogator(Path(models), options)
    IdleUnloader(interrogator.clip.image_model, interrogator.clip.text_model).start()
    return interrogator


def caption(
    interrogator: Interrogator,
    image: bytes | str,
    *,
    model: str = "clip",
    wait: float | None = 60.0,
    caption_options: CaptionOptions | None = None,
    tag_options: TagOptions | None = None,
) -> str:
    """What `POST /sdapi/v1/interrogate` answers: a caption (`clip`) or tags (`deepdanbooru`).
    Raises InvalidImage for a bad image and NpuBusy when the NPU stays taken past `wait` seconds."""
    scores, _ = interrogator.score(_image(interrogator, image), wait)
    if model == "deepdanbooru":
        return interrogator.tags(scores, tag_options)
    return interrogator.caption(scores, caption_options)[0]


def interrogate(interrogator: Interrogator, image: bytes | str, *, wait: float | None = 60.0) -> dict[str, Any]:
    """Every category's picks and best labels with their cosines, the tags, and timings."""
    scores, timings = interrogator.score(_image(interrogator, image), wait)
    text, results = interrogator.caption(scores)
    answer = InterrogationAnswer.of(Interrogation(text, results, timings))
    return answer.model_dump() | {"tags": interrogator.tags(scores)}


def _image(interrogator: Interrogator, image: bytes | str) -> Any:
    policy, draft = ImagePolicy(), interrogator.clip.draft
    if isinstance(image, bytes):
        return open_image_bytes(image, policy, draft)
    return decode_image(image, policy, draft)
