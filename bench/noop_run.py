"""No-op pipeline: wall time of `invoke all` when every stage is up to date, over full-size artifacts.

Builds ViT-B/32-shaped artifacts once (random weights: speed does not depend on them), then times
repeated `invoke all` runs in fresh processes, as a user would type them. Target: <= 2 s.

    python bench/noop_run.py [--runs 5] [--artifacts DIR] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import REPO, emit

TARGET_SECONDS = 2.0


def _config(artifacts: Path) -> Path:
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    path = artifacts.parent / "bench-noop.yaml"
    data = {
        "model": {"id": "builtin:random-vit-b-32"},
        "artifacts": str(artifacts),
        "hosts": {"local": {"kind": "local", "workdir": str(artifacts.parent / "device")}},
        # The benchmark times the engine, not the numerics: loose thresholds keep random weights passing.
        # Every stage on this machine, as examples/local.yaml: no Docker engine or device here.
        "stages": {
            "verify": {"images": str(REPO / "data/images"), "min_cosine": 0.999, "max_abs_diff": 1.0},
            "compile": {"target": "onnxruntime", "min_cosine": 0.9},
            "smoke-test": {"runs": 3, "min_cosine": 0.9},
        },
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _invoke_all(config: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "all", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"invoke all failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--artifacts", type=Path, help="reuse this artifacts dir (built on first use)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="bench-noop-")) / "artifacts"
    config = _config(artifacts.resolve())
    build_seconds, _ = _invoke_all(config)
    walls = []
    for _ in range(args.runs):
        seconds, out = _invoke_all(config)
        if out.count("up to date") < 2:
            raise SystemExit(f"expected every stage up to date:\n{out}")
        walls.append(seconds)
    size = sum(p.stat().st_size for p in artifacts.rglob("*") if p.is_file())
    figures = {
        "artifacts_mb": round(size / 1e6, 1),
        "build_seconds": round(build_seconds, 1),
        "noop_median_s": round(statistics.median(walls), 3),
        "noop_min_s": round(min(walls), 3),
        "noop_max_s": round(max(walls), 3),
        "runs": args.runs,
        "target_s": TARGET_SECONDS,
        "meets_target": statistics.median(walls) <= TARGET_SECONDS,
    }
    title = "no-op `invoke all` over full-size ViT-B/32 artifacts"
    emit(figures, args.json, title, ("figure", "value"), list(figures.items()))


if __name__ == "__main__":
    main()
