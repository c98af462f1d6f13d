"""Shared by the benchmarks: full-size ViT-B/32 models with random weights, built once and cached. (Not
`common`: a script's own folder comes first on sys.path, and that name is the project's package.)"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


DEFAULT_CACHE = Path(tempfile.gettempdir()) / "clip-axera-bench"


def full_size_export(cache: Path = DEFAULT_CACHE) -> Path:
    """artifacts/export of a ViT-B/32-shaped CLIP (random weights), built through the real export stage."""
    from pipeline.graph import StageGraph
    from pipeline.runner import Outcome, RunRequest, run
    from stages import ALL_STAGES
    from stages.config import load_config

    cache.mkdir(parents=True, exist_ok=True)
    config_path = cache / "bench.yaml"
    config_path.write_text(yaml.safe_dump({"model": {"id": "builtin:random-vit-b-32"}, "artifacts": "artifacts"}))
    outcomes = run(load_config(config_path), StageGraph(ALL_STAGES), RunRequest(targets=("export",)))
    if outcomes[-1].outcome is Outcome.FAILED:
        raise SystemExit(f"export failed: {outcomes[-1].summary}")
    return cache / "artifacts" / "export"


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 2)


def write_tables(export: Path, labels: int) -> Path:
    """Label tables shaped like the default vocabulary (a `one`, a `top` and a `many` category) with
    random rows, as embed-vocab writes them for `export`'s text model; returns the directory."""
    from runtime.label_tables import CategoryMode

    tenth = max(1, labels // 10)
    sizes = {"subject": tenth, "flavors": max(1, labels - 2 * tenth), "tags": tenth}
    modes = {"subject": CategoryMode.ONE, "flavors": CategoryMode.TOP, "tags": CategoryMode.MANY}
    return write_random_tables(export, f"vocab-{labels}", {n: (modes[n], c) for n, c in sizes.items()})


def write_random_tables(
    export: Path, name: str, categories: dict, outside_caption: frozenset[str] = frozenset()
) -> Path:
    """Tables of random rows for `categories` (name -> (mode, labels)) as embed-vocab writes them for
    `export`'s text model, kept beside the export (per text model) and reused; returns the directory.
    `outside_caption`: categories with `caption: false`."""
    from modeling.rank_model import write_rank_model
    from runtime.label_tables import RANK_SUFFIX, CategoryEntry, RankModel, TableModel, VocabIndex, write_category
    from runtime.model_io import ExportInfo

    info = ExportInfo.read(export)
    directory = export.parent.parent / "tables" / f"{name}-{info.text.sha256[:12]}-batched-ranks"
    if (directory / VocabIndex.FILE).is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(count for _, count in categories.values()))
    entries = []
    for category, (mode, count) in categories.items():
        rows = rng.standard_normal((count, info.projection_dim)).astype(np.float32)
        file, rows = write_category(directory, category, rows)
        rank_file = f"{category}{RANK_SUFFIX}"
        rank = RankModel(rank_file, **write_rank_model(directory / rank_file, rows))
        names = tuple(f"{category} {i}" for i in range(count))
        caption = category not in outside_caption
        entries.append(
            CategoryEntry(
                category, mode, file, names, threshold=0.1, tags=category == "tags", caption=caption, rank=rank
            )
        )
    index = VocabIndex("bench", info.projection_dim, tuple(entries), info.text.sha256, TableModel.of(info))
    index.write(directory)
    return directory


def server_models(labels: int, cache: Path = DEFAULT_CACHE) -> Path:
    """A models dir as fetch lays it out (the float ONNX export plus `labels` in vocab/), for the server."""
    from runtime.clip import VOCAB_DIR

    export = full_size_export(cache)
    models = cache / f"server-models-{labels}"
    models.mkdir(parents=True, exist_ok=True)
    for source in export.iterdir():
        link = models / source.name
        if source.is_file() and not link.exists():
            link.symlink_to(source)
    tables = write_tables(export, labels)
    vocab = models / VOCAB_DIR
    if vocab.is_symlink() and vocab.resolve() != tables.resolve():
        vocab.unlink()  # tables of an earlier export
    if not vocab.exists():
        vocab.symlink_to(tables)
    return models


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """VmRSS: the process's resident set now."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def arguments(doc: str, **defaults: float) -> argparse.Namespace:
    """Every bench's command line: its numeric options (`--name N`, typed by their defaults), and --json;
    the first line of its docstring describes it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    return parser.parse_args()


def emit(
    figures: dict,
    as_json: bool,
    title: str,
    columns: tuple[str, ...],
    rows: list[tuple[object, ...]],
    footer: str = "",
) -> None:
    """Print a benchmark's figures: one JSON line (--json), or a titled table and its verdict."""
    if as_json:
        print(json.dumps(figures))
        return
    cells = [tuple(str(c) for c in columns), *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    print(title)
    for row in cells:
        first, *rest = row
        print("  " + first.ljust(widths[0]) + "".join(f"  {c.rjust(w)}" for c, w in zip(rest, widths[1:], strict=True)))
    if footer:
        print(f"  {footer}")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
