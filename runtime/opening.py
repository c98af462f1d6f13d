"""One way to open an interrogator from a models dir, for the server, the embedded API and `invoke caption`
alike: the NPU lock, the image encoder (checked against the set's manifest), the label tables beside it,
and how images are decoded. Each caller used to wire these itself, each with other options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.clip import TEXT_UNLOAD_AFTER_S, VOCAB_DIR, ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables
from runtime.npu import NpuLock
from runtime.preprocess import Fidelity


@dataclass(frozen=True)
class OpenOptions:
    npu: NpuLock = field(default_factory=NpuLock)  # shared with whatever else runs on the NPU
    provider: str | None = None  # axengine provider; None: the first available
    device_id: int = 0
    unload_after: float | None = None  # idle seconds before the image encoder leaves the NPU
    verify_hashes: bool = False  # every file's sha256 against the manifest (sizes: always)
    fidelity: Fidelity = Fidelity.FAST
    text_unload_after: float | None = TEXT_UNLOAD_AFTER_S  # idle seconds before the text encoder leaves


def open_interrogator(models_dir: Path, options: OpenOptions | None = None, tables: Path | None = None) -> Interrogator:
    """The image encoder and the label tables of the set in `models_dir` (or in `tables`, for the build
    report, which pairs export's float models with embed-vocab's tables), ready to interrogate."""
    options = options or OpenOptions()
    clip = ClipRuntime.load(
        Path(models_dir),
        provider=options.provider,
        device_id=options.device_id,
        npu=options.npu,
        unload_after=options.unload_after,
        verify_hashes=options.verify_hashes,
        fidelity=options.fidelity,
        text_unload_after=options.text_unload_after,
    )
    return Interrogator(clip, LabelTables.load(tables or clip.models_dir / VOCAB_DIR))
