"""embed-vocab's peak memory on a large vocabulary: the peak RSS of `invoke embed-vocab` for --labels
distinct labels in one category (a labels file), against the size of the tables it writes.

The model is the built-in tiny CLIP (the tables' width is its projection, 64): what grows with the label
count is the vocabulary's memory, not the text model's. Target: the peak above a 100-label run's (the
process's own: imports, model) within ~2x the tables' size. Export runs first, in its own process.

    python bench/embed_vocab_memory.py [--labels 250000] [--json]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from harness import REPO, arguments, emit

WORDS = "red blue green tall small ancient modern quiet bright dark wooden glass stone misty golden".split()
TARGET_RATIO = 2.0
SMALL = 100  # labels of the run that measures the process's own memory


def write_vocabulary(folder: Path, labels: int) -> Path:
    """One `top` category of `labels` distinct, realistic-length labels (three words and a number)."""
    rng = random.Random(labels)
    lines = (f"{' '.join(rng.choices(WORDS, k=3))} {index}" for index in range(labels))
    (folder / "labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocabulary = {"name": "big", "categories": [{"name": "flavors", "mode": "top", "labels_file": "labels.txt"}]}
    path = folder / "vocab.yaml"
    path.write_text(yaml.safe_dump(vocabulary), encoding="utf-8")
    return path


def peak_mb(*args: str) -> float:
    """Run `invoke ...` in a child; that child's own peak RSS in MB (wait4's rusage is the child's)."""
    process = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"invoke {' '.join(args)} failed (exit {process.returncode})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def embed(folder: Path, labels: int) -> tuple[float, float]:
    """(peak RSS MB of embed-vocab over `labels` labels, the tables' MB) in a fresh artifacts folder."""
    run = folder / f"run-{labels}"
    run.mkdir()
    data = {"model": {"id": "builtin:tiny-clip"}, "artifacts": str(run / "artifacts")}
    data["stages"] = {"embed-vocab": {"vocabulary": str(write_vocabulary(run, labels))}}
    config = run / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    peak_mb("export", "--config", str(config))
    peak = peak_mb("embed-vocab", "--config", str(config))
    out = run / "artifacts" / "embed-vocab"
    return peak, sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".npy", ".data")) / 2**20


def main() -> None:
    args = arguments(__doc__, labels=250_000)
    with tempfile.TemporaryDirectory(prefix="clip-axera-embed-memory-") as tmp:
        own, _ = embed(Path(tmp), SMALL)  # the process itself: imports, the model, a small vocabulary
        peak, tables = embed(Path(tmp), args.labels)
    growth = peak - own
    figures = {
        "labels": args.labels,
        "peak_rss_mb": round(peak, 1),
        "process_own_mb": round(own, 1),
        "vocabulary_growth_mb": round(growth, 1),
        "tables_mb": round(tables, 1),
        "growth_over_tables": round(growth / tables, 2),
    }
    emit(
        figures,
        args.json,
        f"embed-vocab of {args.labels:,} labels (tiny CLIP, 64-d tables): peak RSS vs the tables' size",
        ("figure", "value"),
        list(figures.items()),
        f"target: the growth over a {SMALL}-label run within ~{TARGET_RATIO:g}x the tables' size",
    )


if __name__ == "__main__":
    main()
