"""What the toolchains need to know about each encoder, read from export.json and calibration.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime import model_io
from toolchains.calibration_tar import CalibrationSet

ENCODERS = ("image", "text")


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # "image_encoder" / "text_encoder": file stems everywhere
    onnx: Path  # the float model from export
    input_name: str
    input_dtype: str  # "float32" or "int64", as exported
    output_name: str
    calibration: Path  # the Numpy tar from calibrate
    layout: str = "NCHW"  # of an image input: CLIP's pixel_values; a WD tagger takes NHWC
    # What the device feeds an image input (Pulsar2's input_processors src_dtype): CLIP's normalized floats,
    # a WD tagger's 0-255 pixels as U8 (the NPU converts them to the graph's float input).
    source_dtype: str = "FP32"

    @property
    def is_token_input(self) -> bool:
        return self.input_dtype.startswith("int")


def encoder_specs(export_dir: Path, calibrate_dir: Path) -> list[EncoderSpec]:
    info = model_io.ExportInfo.read(export_dir)
    calibration = CalibrationSet.read(calibrate_dir)
    specs = []
    for part in ENCODERS:
        entry = info.encoder(part)
        specs.append(
            EncoderSpec(
                name=Path(entry.file).stem,
                onnx=export_dir / entry.file,
                input_name=entry.input.name,
                input_dtype=entry.input.dtype,
                output_name=entry.output.name,
                calibration=calibrate_dir / calibration.archive(entry.input.name).file,
            )
        )
    return specs
