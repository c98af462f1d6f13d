"""Batch captioning for training sets: a .txt beside each image (or in an output dir) and a JSONL.

Resumable: an image whose caption file exists is skipped. An unreadable file is reported and skipped,
never fatal. Works on the device or on the controller, with whatever backend the models need.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runtime.interrogator import CaptionOptions, Interrogator
from runtime.preprocess import find_images, open_image

JSONL_NAME = "captions.jsonl"


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
) -> CaptionSummary:
    images = find_images(images_dir)
    jsonl = (out_dir or images_dir) / JSONL_NAME
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    summary = CaptionSummary()
    with jsonl.open("a", encoding="utf-8") as log:
        for image_path in images:
            target = caption_path(image_path, images_dir, out_dir)
            if target.exists() and target.stat().st_size and not overwrite:
                summary.skipped += 1
                on_image(image_path)
                continue
            try:
                image = open_image(image_path)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
                summary.failed.append((str(image_path), str(exc) or type(exc).__name__))
                on_image(image_path)
                continue
            result = interrogator.interrogate(image, options)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(result.caption + "\n", encoding="utf-8")
            record = {"file": str(image_path.relative_to(images_dir)), **result.to_json()}
            log.write(json.dumps(record) + "\n")
            log.flush()
            summary.captioned += 1
            on_image(image_path)
    return summary
