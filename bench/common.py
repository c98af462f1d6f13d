"""Shared by the benchmarks: full-size ViT-B/32 models with random weights, built once and cached."""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "clip-axera-bench"


def full_size_export(cache: Path = DEFAULT_CACHE) -> Path:
    """artifacts/export of a ViT-B/32-shaped CLIP (random weights), built through the real export stage."""
    from pipeline.config import load_config
    from pipeline.graph import StageGraph
    from pipeline.runner import Outcome, RunRequest, run
    from stages import ALL_STAGES

    cache.mkdir(parents=True, exist_ok=True)
    config_path = cache / "bench.yaml"
    config_path.write_text(yaml.safe_dump({"model": {"id": "builtin:random-vit-b-32"}, "artifacts": "artifacts"}))
    outcomes = run(load_config(config_path), StageGraph(ALL_STAGES), RunRequest(targets=("export",)))
    if outcomes[-1].outcome is Outcome.FAILED:
        raise SystemExit(f"export failed: {outcomes[-1].summary}")
    return cache / "artifacts" / "export"


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 2)
