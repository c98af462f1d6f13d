"""What the toolchains need to know about each encoder, read from export.json and calibration.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime import model_io

ENCODERS = ("image", "text")


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # "image_encoder" / "text_encoder": file stems everywhere
    onnx: Path  # the float model from export
    input_name: str
    input_dtype: str  # "float32" or "int64", as exported
    output_name: str
    calibration: Path  # the Numpy tar from calibrate

    @property
    def is_token_input(self) -> bool:
        return self.input_dtype.startswith("int")


def encoder_specs(export_dir: Path, calibrate_dir: Path) -> list[EncoderSpec]:
    info = model_io.ExportInfo.read(export_dir)
    calibration = json.loads((calibrate_dir / "calibration.json").read_text(encoding="utf-8"))
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
                calibration=calibrate_dir / calibration[entry.input.name]["archive"],
            )
        )
    return specs
