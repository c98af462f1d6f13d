"""calibrate: the quantization calibration sets, from real images and real prompts.

Images go through runtime/'s preprocessing, exactly what the device feeds the NPU. Text comes from
real tokenized prompts: random ids would put the end-of-text position (where CLIP pools) at random.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from common.hashing import sha256_file
from pipeline.config import ConfigPath, Strict
from pipeline.errors import StageError
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.user_files import read_lines
from runtime import model_io
from runtime.preprocess import find_images, open_image, preprocess
from runtime.tokenizer import TextTokenizer
from stages.shipped import SHIPPED
from toolchains.calibration_tar import Archive, CalibrationSet, write_npy_tar

if TYPE_CHECKING:
    from stages.config import PipelineConfig

log = logging.getLogger(__name__)

IMAGE_TAR = f"{model_io.IMAGE_INPUT}.tar"
TEXT_TAR = f"{model_io.TEXT_INPUT}.tar"


class CalibrationPhotos(Strict):
    """The photos a calibration set is chosen from (the tagger's too)."""

    images: ConfigPath = SHIPPED / "data/images"
    image_count: int = Field(32, ge=1, le=10000)
    seed: int = 0  # which files and prompts are chosen when there are more than the counts


class CalibrateParams(CalibrationPhotos):
    prompts: ConfigPath = SHIPPED / "data/calibration_prompts.txt"  # one prompt a line
    text_count: int = Field(32, ge=1, le=10000)


class CalibrateStage(Stage):
    name = "calibrate"
    help = "Build the image and text calibration sets (Pulsar2 Numpy tarballs) from real images and prompts."
    tools = ("tokenizers", "pillow", "numpy")
    settings = CalibrateParams
    after = ("export",)
    outputs = (IMAGE_TAR, TEXT_TAR, CalibrationSet.FILE)

    def params(self, config: PipelineConfig) -> CalibrateParams:
        return config.stages.calibrate

    def external_inputs(self, params: CalibrateParams) -> list[Path]:
        return [*find_images(params.images), params.prompts]

    def run(self, ctx: StageContext[CalibrateParams]) -> StageResult:
        params, export_dir = ctx.params, ctx.upstream("export")
        info = model_io.ExportInfo.read(export_dir)
        chooser = random.Random(params.seed)
        images, chosen_images = choose_images(params, chooser, self.name)
        pixels = [preprocess(open_image(path), info.facts.preprocess) for path in chosen_images]
        write_npy_tar(ctx.out_dir / IMAGE_TAR, pixels)

        prompts = _read_prompts(params.prompts)
        chosen_prompts = chooser.sample(prompts, min(params.text_count, len(prompts)))
        tokenizer = TextTokenizer.of_export(export_dir, info)
        ids = [tokenizer.encode(prompt) for prompt in chosen_prompts]
        write_npy_tar(ctx.out_dir / TEXT_TAR, ids)

        CalibrationSet(
            {
                model_io.IMAGE_INPUT: Archive(
                    IMAGE_TAR, pixels[0].shape, str(pixels[0].dtype), tuple(str(p) for p in chosen_images)
                ),
                model_io.TEXT_INPUT: Archive(TEXT_TAR, ids[0].shape, str(ids[0].dtype), tuple(chosen_prompts)),
            }
        ).write(ctx.out_dir)
        few = len(images) < params.image_count
        short = [f"{len(pixels)} images" + (f" (only {len(images)} distinct found)" if few else "")]
        short.append(f"{len(ids)} prompts" + (f" (only {len(prompts)})" if len(prompts) < params.text_count else ""))
        return StageResult(summary=", ".join(short), figures={"images": len(pixels), "prompts": len(ids)})


def choose_images(params: CalibrationPhotos, chooser: random.Random, stage: str) -> tuple[list[Path], list[Path]]:
    """(every distinct photo, those chosen for calibration), warning when there are fewer than asked."""
    images = _distinct_images(params.images)
    if not images:
        raise StageError(stage, f"no images in {params.images}", hint="set stages.calibrate.images")
    if len(images) < params.image_count:
        log.warning(
            "%s: only %d distinct images in %s for image_count %d: quantization ranges come from "
            "fewer samples than asked (Axera's CLIP builds calibrate on 32); add photos like the ones "
            "the model will see",
            stage,
            len(images),
            params.images,
            params.image_count,
        )
    return images, sorted(chooser.sample(images, min(params.image_count, len(images))))


def _distinct_images(folder: Path) -> list[Path]:
    """The image files of a folder, a copy of the same bytes counted once."""
    by_digest: dict[str, Path] = {}
    for path in find_images(folder):
        by_digest.setdefault(sha256_file(path), path)
    return sorted(by_digest.values())


def _read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise StageError("calibrate", f"prompt file {path} not found", hint="set stages.calibrate.prompts")
    lines = [line.strip() for line in read_lines(path, "prompts file")]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise StageError("calibrate", f"{path} holds no prompts", hint="one prompt a line")
    return prompts
