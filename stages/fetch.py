"""fetch: put the compiled models and what the runtime needs beside them on the device.

Each file is checksummed, uploaded under a temporary name and renamed into place; files whose remote
sha256 already matches are skipped. The device's manifest.json is written last, so a device that
rebooted mid-fetch shows the previous complete set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from pipeline.config import PipelineConfig
from pipeline.files import write_json
from pipeline.hosts import connect
from pipeline.hosts.sync import upload
from pipeline.report import console
from pipeline.stage import Stage, StageContext, StageResult, device_params
from runtime import model_io
from runtime.clip import VOCAB_DIR

MANIFEST = "manifest.json"
_GOLDEN_FILES = ("golden.json",)
_BAR_THRESHOLD = 8 * 1024 * 1024  # show a progress bar for files above this size


class FetchStage(Stage):
    name = "fetch"
    help = "Copy the compiled models, tokenizer and golden data to the device (--host), checksummed."
    after = ("export", "verify", "compile", "embed-vocab")
    outputs = (MANIFEST,)
    code_modules = ("pipeline.hosts.sync",)

    def params(self, config: PipelineConfig) -> dict[str, Any]:
        return device_params(config, config.stages.fetch)

    def run(self, ctx: StageContext) -> StageResult:
        params = ctx.config.stages.fetch
        files = device_files(ctx)
        with connect(ctx.config, params.host) as transport:
            target = transport.path(params.models_dir)
            remote = {local: f"{target}/{name}" for name, local in files.items()}
            with _progress(files) as progress:
                summary = upload(transport, remote, progress)
            manifest = {
                "files": {name: summary.digests[remote[local]] for name, local in files.items()},
                "compile": json.loads((ctx.upstream("compile") / "report.json").read_text(encoding="utf-8")),
            }
            manifest_path = ctx.out_dir / MANIFEST
            write_json(manifest_path, manifest)
            upload(transport, {manifest_path: f"{target}/{MANIFEST}"})
        write_json(
            ctx.out_dir / "transfer.json",
            {"host": params.host, "dir": target, "sent": list(summary.sent), "unchanged": list(summary.skipped)},
        )
        return StageResult(
            summary=f"{params.host}:{target}: {len(summary.sent)} sent ({summary.bytes_sent / 1e6:.1f} MB), "
            f"{len(summary.skipped)} unchanged",
            figures={"sent": len(summary.sent), "unchanged": len(summary.skipped), "bytes": summary.bytes_sent},
        )


def device_files(ctx: StageContext) -> dict[str, Path]:
    """Device-side name -> local file: compiled models, tokenizer/preprocessing, golden inputs."""
    export, compiled = ctx.upstream("export"), ctx.upstream("compile")
    report = json.loads((compiled / "report.json").read_text(encoding="utf-8"))
    files = {model["file"]: compiled / model["file"] for model in report["models"].values()}
    for name in (model_io.TOKENIZER_FILE, model_io.PREPROCESSOR_FILE, model_io.EXPORT_INFO_FILE):
        files[name] = export / name
    vocab = ctx.upstream("embed-vocab")
    for path in sorted(vocab.iterdir()):
        files[f"{VOCAB_DIR}/{path.name}"] = path
    golden = ctx.upstream("verify") / "golden"
    for path in sorted(golden.glob("*.npy")) + [golden / name for name in _GOLDEN_FILES]:
        files[f"golden/{path.name}"] = path
    return files


@contextmanager
def _progress(files: dict[str, Path]) -> Iterator[Callable[[int, int], None]]:
    """A rich transfer bar (per file) when the set is big; silent for small sets."""
    total = sum(p.stat().st_size for p in files.values())
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True, disable=total < _BAR_THRESHOLD) as bar:
        task = bar.add_task("fetch", total=None)
        yield lambda done, size: bar.update(task, completed=done, total=size)
