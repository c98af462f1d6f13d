"""Batch captioning for training sets: a .txt beside each image (or in an output dir) and a JSONL.

Resumable: an image whose caption file exists is skipped. An unreadable file is reported and skipped,
never fatal. Works on the device or on the controller, with whatever backend the models need.

Images are decoded and preprocessed by a pool of threads (Pillow and numpy release the GIL) while the
one encoder runs; at most AHEAD images per worker wait prepared, so memory stays bounded on any folder,
and results are written in the folder's order.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.answers import InterrogationAnswer
from runtime.errors import InvalidImage
from runtime.interrogator import CaptionOptions, Interrogator
from runtime.preprocess import find_images
from runtime.prompt_modes import PromptBuilder, PromptMode

JSONL_NAME = "captions.jsonl"
AHEAD = 2  # prepared images waiting per decode worker


@dataclass
class CaptionSummary:
    captioned: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def caption_path(image: Path, images_dir: Path, out_dir: Path | None) -> Path:
    if out_dir is None:
        return image.with_suffix(".txt")
    return (out_dir / image.relative_to(images_dir)).with_suffix(".txt")


def caption_folder(
    interrogator: Interrogator,
    images_dir: Path,
    out_dir: Path | None = None,
    *,
    options: CaptionOptions | None = None,
    overwrite: bool = False,
    on_image: Callable[[Path], None] = lambda _: None,
    workers: int | None = None,
    prompts: tuple[PromptBuilder, PromptMode] | None = None,
) -> CaptionSummary:
    """A caption per image (A1111's `clip` caption), or with `prompts` clip-interrogator's prompt in a mode."""
    if prompts:
        prompts[0].require(prompts[1])  # before the first image: a vocabulary without the lists says so
    jsonl = (out_dir or images_dir) / JSONL_NAME
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    summary = CaptionSummary()
    todo = []
    for image_path in find_images(images_dir):
        target = caption_path(image_path, images_dir, out_dir)
        if target.exists() and target.stat().st_size and not overwrite:
            summary.skipped += 1
            on_image(image_path)
        else:
            todo.append((image_path, target))
    workers = workers or os.cpu_count() or 2
    with jsonl.open("a", encoding="utf-8") as log, ThreadPoolExecutor(workers, "caption-decode") as pool:
        prepared: deque[tuple[Path, Path, Future[np.ndarray]]] = deque()

        def finish_oldest() -> None:
            image_path, target, pixels = prepared.popleft()
            _caption_one(interrogator, images_dir, image_path, target, pixels, options, log, summary, prompts)
            on_image(image_path)

        for image_path, target in todo:
            prepared.append((image_path, target, pool.submit(_pixels, interrogator, image_path)))
            if len(prepared) > AHEAD * workers:
                finish_oldest()
        while prepared:
            finish_oldest()
    return summary


def _pixels(interrogator: Interrogator, image_path: Path) -> np.ndarray:
    return interrogator.clip.preprocess(interrogator.clip.open(image_path))


def _caption_one(
    interrogator: Interrogator,
    images_dir: Path,
    image_path: Path,
    target: Path,
    pixels: Future[np.ndarray],
    options: CaptionOptions | None,
    log: TextIO,
    summary: CaptionSummary,
    prompts: tuple[PromptBuilder, PromptMode] | None,
) -> None:
    try:
        if prompts:
            builder, mode = prompts
            made = builder.prompt(interrogator.score(pixels.result())[0], mode)
            text = made.prompt
            answer = {"mode": mode.value, "prompt": made.prompt, "text_encodes": made.text_encodes}
        else:
            result = interrogator.interrogate(pixels.result(), options)
            text, answer = result.caption, InterrogationAnswer.of(result).model_dump()
    except (InvalidImage, OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        summary.failed.append((str(image_path), str(exc) or type(exc).__name__))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n", encoding="utf-8")
    record = {"file": str(image_path.relative_to(images_dir)), **answer}
    log.write(json.dumps(record) + "\n")
    log.flush()
    summary.captioned += 1
