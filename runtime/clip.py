"""The device's image encoder from a models directory (as fetch lays it out), and its preprocessing."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ModelFilesError
from runtime import model_io
from runtime.backends import Backend, open_backend
from runtime.manifest import MANIFEST_FILE, Manifest, model_set
from runtime.npu import NpuLock, ResidentModel
from runtime.preprocess import Fidelity, PreprocessConfig, draft, open_image, preprocess
from runtime.tokenizer import TextTokenizer

VOCAB_DIR = "vocab"
FIRST_LOAD_WAIT_S = 300  # at start: how long to wait for another program to free the NPU


TEXT_UNLOAD_AFTER_S = 60.0  # the text encoder (prompt modes only) leaves the NPU after this idle time


@dataclass
class ClipRuntime:
    image_model: ResidentModel  # the image encoder: loaded now, unloaded after an idle period if asked
    text_model: ResidentModel  # the text encoder: loaded on first use (prompt modes), unloaded when idle
    npu: NpuLock
    preprocess_config: PreprocessConfig
    info: model_io.ExportInfo
    models_dir: Path
    files: dict[str, str]  # encoder -> the model file it runs
    fidelity: Fidelity = Fidelity.FAST  # how images are decoded and resized (runtime.preprocess)

    @classmethod
    def load(
        cls,
        models_dir: Path,
        *,
        provider: str | None = None,
        device_id: int = 0,
        npu: NpuLock | None = None,
        unload_after: float | None = None,
        verify_hashes: bool = False,
        fidelity: Fidelity = Fidelity.FAST,
        text_unload_after: float | None = TEXT_UNLOAD_AFTER_S,
    ) -> ClipRuntime:
        """The image encoder named by manifest.json (a compiled model), or the float ONNX from export.json;
        the text encoder is loaded only when a prompt mode first needs it (labels are precomputed tables).
        The models link is resolved once: a fetch that swaps in a new set while this runs (or reloads
        after an idle unload) cannot mix files of two sets. The set is checked against its manifest
        (sizes; sha256 with `verify_hashes`). Models load while holding `npu` (a shared NPU lock)."""
        models_dir = model_set(models_dir)
        if not (models_dir / model_io.ExportInfo.FILE).is_file():
            raise ModelFilesError(f"{models_dir} holds no {model_io.ExportInfo.FILE}: run `invoke fetch` first")
        info = model_io.ExportInfo.read(models_dir)
        files = model_files(models_dir, info, verify_hashes)
        npu = npu or NpuLock()
        image_model = ResidentModel(
            lambda: open_backend(models_dir / files["image"], provider, device_id), npu, unload_after
        )
        with npu.hold(FIRST_LOAD_WAIT_S):
            image_model.get()  # load now: a model that cannot run fails at start, not at the first request
        text_model = ResidentModel(
            lambda: open_backend(models_dir / files["text"], provider, device_id), npu, text_unload_after
        )
        return cls(
            image_model=image_model,
            text_model=text_model,
            npu=npu,
            preprocess_config=info.facts.preprocess,
            info=info,
            models_dir=models_dir,
            files=files,
            fidelity=fidelity,
        )

    @property
    def image(self) -> Backend:
        """The image encoder's session, loaded again if it was unloaded; hold `npu` around its use."""
        return self.image_model.get()

    def open(self, source: Path | bytes) -> Image.Image:
        """An image file (or its bytes) decoded as this runtime's fidelity asks: see `draft`."""
        return open_image(source, self.preprocess_config, self.fidelity)

    def draft(self, image: Image.Image) -> None:
        """Before an opened image is loaded: with Fidelity.FAST, a JPEG decodes at a reduced scale."""
        if self.fidelity is Fidelity.FAST:
            draft(image, self.preprocess_config)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.preprocess_config, self.fidelity)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The caller holds `npu` (Interrogator.embed does)."""
        return self.image.run({model_io.IMAGE_INPUT: pixels})[model_io.IMAGE_OUTPUT][0]

    def encode_image(self, image: Image.Image) -> np.ndarray:
        return self.encode_pixels(self.preprocess(image))

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        """The exported tokenizer, read when text is first encoded (a caption needs none)."""
        return TextTokenizer.of_export(self.models_dir, self.info)

    def encode_texts(self, texts: list[str], wait: float | None = None) -> np.ndarray:
        """Texts -> [n, dim] text embeddings: tokenized, then encoded holding the NPU lock (`wait` bounds the
        wait for it: NpuBusy past it). The prompt modes and classify both encode this way."""
        ids, _ = self.tokenizer.encode_batch(texts)
        with self.npu.hold(wait):
            return self.encode_ids(ids)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        """[n, context_length] ids -> [n, dim] text embeddings, one run each (the NPU model has batch 1);
        the caller holds `npu`. Loads the text encoder on first use."""
        text = self.text_model.get()
        return np.stack([text.run({model_io.TEXT_INPUT: row[None]})[model_io.TEXT_OUTPUT][0] for row in ids])


def model_files(models_dir: Path, info: model_io.ExportInfo, verify_hashes: bool = False) -> dict[str, str]:
    """Encoder -> file: the compiled models when a manifest (fetch's set) names them, after checking the
    set against it; else export's float ONNX (an export folder used directly)."""
    if (models_dir / MANIFEST_FILE).is_file():
        manifest = Manifest.read(models_dir)
        manifest.verify(models_dir, verify_hashes)
        return {part: manifest.compile.file(Path(info.encoder(part).file).stem) for part in ("image", "text")}
    return {part: info.encoder(part).file for part in ("image", "text")}
