"""The Pulsar2 stand-in holds to Axera's documents: the config proto, the Numpy calibration layout, the
eight-column precision table. If it drifted toward what our code happens to accept, these fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolchains.calibration_tar import write_npy_tar
from toolchains.precision_table import find_precision_table

STANDINS = Path(__file__).resolve().parent / "standins"
DOCUMENTED_COLUMNS = ["Operator", "Type", "Output Tensor", "Shape", "DType", "QDType", "Cosin", "MSE"]


@pytest.fixture
def build_dir(built_artifacts: Path, tmp_path: Path) -> Path:
    """A build host's workdir holding the text encoder and a valid calibration archive and config."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    shutil.copy(built_artifacts / "export/text_encoder.onnx", data / "models/text_encoder.onnx")
    ids = np.zeros((1, 77), np.int64)
    write_npy_tar(data / "calibration.tar", [ids, ids])
    _config(data, {})
    return data


def _config(data: Path, quant_overrides: dict, **top: object) -> None:
    quant = {
        "input_configs": [
            {
                "tensor_name": "input_ids",
                "calibration_dataset": "calibration.tar",
                "calibration_format": "Numpy",
                "calibration_size": 2,
            }
        ],
        "calibration_method": "MinMax",
        "precision_analysis": True,
        "precision_analysis_method": "EndToEnd",
        "precision_analysis_mode": "Reference",
        **quant_overrides,
    }
    config = {"model_type": "ONNX", "npu_mode": "NPU3", "quant": quant, **top}
    (data / "config.json").write_text(json.dumps(config))


def _build(data: Path) -> subprocess.CompletedProcess:
    """`pulsar2 build` as the image runs it: in the mounted work folder, output to a pipe."""
    env = {**os.environ, "PYTHONPATH": str(STANDINS / "python")}
    env.pop("COLUMNS", None)
    command = [sys.executable, str(STANDINS / "pulsar2"), "build", "--input", "models/text_encoder.onnx"]
    command += ["--output_dir", "build", "--config", "config.json"]
    return subprocess.run(command, cwd=data, capture_output=True, text=True, env=env, timeout=120)


def test_the_build_prints_the_documented_eight_column_table_and_saves_it(build_dir: Path, tmp_path: Path) -> None:
    result = _build(build_dir)
    assert result.returncode == 0, result.stderr
    assert "Quant Precision Table【EndToEnd Reference】" in result.stdout
    assert "save precision analysis table to [build/quant/debug/precision_analysis_table.txt]" in result.stdout
    table_lines = [line for line in result.stdout.splitlines() if line.startswith(("┃", "│", "┏", "└"))]
    assert max(len(line) for line in table_lines) == 80  # a pipe: rich's default width
    saved = (build_dir / "build/quant/debug/precision_analysis_table.txt").read_text()
    header = next(line for line in saved.splitlines() if line.startswith("┃"))
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == DOCUMENTED_COLUMNS
    from_log, from_file = find_precision_table(result.stdout), find_precision_table(saved)
    assert from_log is not None and from_file is not None
    assert from_log.layers == from_file.layers and from_file.final_cosine == pytest.approx(0.9987)


@pytest.mark.parametrize(
    ("quant", "top", "message"),
    [
        ({"calibration_method": "KL"}, {}, "Invalid enum value KL for enum type QuantMethod"),
        ({"precision_analysis_method": "Whole"}, {}, "Invalid enum value Whole for enum type PrecisionAnalysisMethod"),
        ({"calibration_methods": "MinMax"}, {}, 'Message type "pulsar2.build.QuantConfig" has no field named'),
        ({}, {"npu_cores": 3}, 'Message type "pulsar2.build.BuildConfig" has no field named "npu_cores"'),
    ],
)
def test_keys_and_enum_values_outside_the_proto_are_refused(
    build_dir: Path, tmp_path: Path, quant: dict, top: dict, message: str
) -> None:
    _config(build_dir, quant, **top)
    result = _build(build_dir)
    assert result.returncode == 2 and message in result.stderr


def test_a_calibration_sample_unlike_the_model_input_is_refused(build_dir: Path, tmp_path: Path) -> None:
    write_npy_tar(build_dir / "calibration.tar", [np.zeros((1, 77), np.int32)])
    result = _build(build_dir)
    assert result.returncode == 2
    assert "calibration sample 00000.npy of input_ids is int32 [1, 77], the model input is int64 [1, 77]" in (
        result.stderr
    )
