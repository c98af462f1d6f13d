"""clip-interrogator's prompt modes per request: what each costs in text encodes and time, on tables sized
as its lists are (10,530 artists, 100,954 flavors ...; random rows, ViT-B/32 shapes).

Two encoders: this machine's onnxruntime CPU (the float ViT-B/32 image and text encoders), and an
NPU-class stand-in that waits without using a core: NPU_FLOOR_MS per image (bench/inputs.py), TEXT_MS
per text (Axera publishes 4.6 ms for Chinese-CLIP ViT-L/14's text encoder on the AX650; ViT-B/32's is
smaller). Expected: fast and classic add no text encode; best and negative cost up to
1 + max_flavors x (chain_candidates + 1) + 4 encodes.

    python bench/prompt_modes.py [--rounds 3] [--json]
"""

from __future__ import annotations

import time

import numpy as np
from harness import REPO, arguments, emit, full_size_export, median_ms, write_random_tables
from inputs import NPU_FLOOR_MS

from runtime.clip import ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import CategoryMode, LabelTables
from runtime.preprocess import open_image
from runtime.prompt_modes import PromptBuilder, PromptMode

TEXT_MS = 3.0
CATEGORIES = {  # clip-interrogator 0.6.0's lists as vocab/clip-interrogator.yaml builds them
    "subject": (CategoryMode.ONE, 702),
    "medium": (CategoryMode.ONE, 95),
    "artist": (CategoryMode.ONE, 10_530),
    "trending": (CategoryMode.ONE, 72),
    "movement": (CategoryMode.ONE, 200),
    "flavor": (CategoryMode.TOP, 100_954),
    "negative": (CategoryMode.TOP, 41),
}


def npu_class(clip: ClipRuntime) -> ClipRuntime:
    """The same runtime, its encodes waits that hold no core (what NPU encodes cost the CPU)."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=clip.info.projection_dim).astype(np.float32)

    def encode_pixels(pixels: np.ndarray) -> np.ndarray:
        time.sleep(NPU_FLOOR_MS / 1e3)
        return image

    def encode_ids(ids: np.ndarray) -> np.ndarray:
        time.sleep(TEXT_MS / 1e3 * len(ids))
        return rng.normal(size=(len(ids), clip.info.projection_dim)).astype(np.float32)

    clip.encode_pixels = encode_pixels  # type: ignore[method-assign]
    clip.encode_ids = encode_ids  # type: ignore[method-assign]
    return clip


def main() -> None:
    args = arguments(__doc__, rounds=3)
    export = full_size_export()
    tables = LabelTables.load(write_random_tables(export, "clip-interrogator", CATEGORIES))
    photo = open_image(REPO / "data/images/cat.jpg")
    rows, figures = [], {"labels": sum(count for _, count in CATEGORIES.values())}
    for encoder in ("CPU onnxruntime", f"NPU-class ({NPU_FLOOR_MS:g} ms image, {TEXT_MS:g} ms text)"):
        clip = ClipRuntime.load(export)
        interrogator = Interrogator(clip if encoder.startswith("CPU") else npu_class(clip), tables)
        builder = PromptBuilder(interrogator)
        figures[encoder] = {}
        for mode in PromptMode:
            samples, encodes = [], 0
            for _ in range(args.rounds):
                started = time.perf_counter()
                scores, _ = interrogator.score(photo)
                result = builder.prompt(scores, mode)
                samples.append(time.perf_counter() - started)
                encodes = result.text_encodes
            figures[encoder][mode.value] = {"median_ms": median_ms(samples), "text_encodes": encodes}
            rows.append((encoder, mode.value, encodes, median_ms(samples)))
    title = f"prompt modes per request, {figures['labels']:,} labels (clip-interrogator's lists), ViT-B/32 shapes"
    emit(figures, args.json, title, ("encoder", "mode", "text encodes", "median ms"), rows)


if __name__ == "__main__":
    main()
