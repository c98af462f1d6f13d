"""Shared fixtures: config files written per test, and one tiny-CLIP pipeline run reused by many tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.config import PipelineConfig, load_config
from pipeline.graph import StageGraph
from pipeline.runner import RunRequest, run

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "data" / "images"


def tiny_config_dict(artifacts: Path) -> dict:
    return {
        "model": {"id": "builtin:tiny-clip"},
        "artifacts": str(artifacts),
        "stages": {
            "export": {"opset": 14},
            "verify": {"images": str(IMAGES), "max_images": 2, "min_cosine": 0.99999, "max_abs_diff": 1e-4},
        },
    }


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a YAML config (a dict, or raw text) into tmp_path and return its path."""

    def write(data: dict | str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def built_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """export + verify run once on the tiny CLIP; tests copy the result rather than rebuild it."""
    from stages import ALL_STAGES

    root = tmp_path_factory.mktemp("built")
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(root / "artifacts")), encoding="utf-8")
    outcomes = run(load_config(path), StageGraph(ALL_STAGES), RunRequest())
    assert [o.outcome.value for o in outcomes] == ["ran", "ran"], outcomes
    return root / "artifacts"


@pytest.fixture
def tiny_pipeline(built_artifacts: Path, tmp_path: Path) -> Callable[..., PipelineConfig]:
    """A private copy of the built artifacts plus a config pointing at it, with optional overrides."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built_artifacts, artifacts, copy_function=shutil.copy2)

    def make(**stage_overrides: dict) -> PipelineConfig:
        data = tiny_config_dict(artifacts)
        for stage, values in stage_overrides.items():
            data["stages"][stage].update(values)
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make
