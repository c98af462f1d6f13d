"""tagger-calibrate: the tagger's calibration set (a Pulsar2 Numpy tarball) from real photos, prepared as the
device prepares them (runtime/tagger.py: padded on white, resized, BGR 0-255 NHWC). The photos, their
count and the seed are calibrate's (`stages.calibrate`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.stage import Stage, StageContext, StageResult
from runtime.preprocess import find_images, open_image
from runtime.tagger import TaggerInfo, prepare_image
from stages.calibrate import CalibrationPhotos, choose_images
from toolchains.calibration_tar import Archive, CalibrationSet, write_npy_tar

if TYPE_CHECKING:
    from stages.config import PipelineConfig


class TaggerCalibrateStage(Stage):
    name = "tagger-calibrate"
    help = "Build the tagger's calibration set (a Pulsar2 Numpy tarball) from real photos."
    tools = ("pillow", "numpy")
    after = ("tagger-export",)
    outputs = (CalibrationSet.FILE,)

    def params(self, config: PipelineConfig) -> CalibrationPhotos:
        return CalibrationPhotos(**config.stages.calibrate.model_dump(include=set(CalibrationPhotos.model_fields)))

    def external_inputs(self, params: CalibrationPhotos) -> list[Path]:
        return find_images(params.images)

    def run(self, ctx: StageContext[CalibrationPhotos]) -> StageResult:
        info = TaggerInfo.read(ctx.upstream("tagger-export"))
        images, chosen = choose_images(ctx.params, random.Random(ctx.params.seed), self.name)
        # The float graph's input (what Pulsar2 calibrates the ONNX model with): the device's U8 pixels as float32.
        pixels = [prepare_image(open_image(path), info.size).astype(np.float32) for path in chosen]
        archive = "tagger.tar"
        write_npy_tar(ctx.out_dir / archive, pixels)
        entry = Archive(archive, pixels[0].shape, str(pixels[0].dtype), tuple(str(path) for path in chosen))
        CalibrationSet({info.input: entry}).write(ctx.out_dir)
        few = f" (only {len(images)} distinct found)" if len(images) < ctx.params.image_count else ""
        return StageResult(summary=f"{len(pixels)} photos{few}", figures={"images": len(pixels)})
