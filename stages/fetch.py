"""fetch: put the compiled models and what the runtime needs beside them on the device.

The device's models dir may be the Stable Diffusion server's own: fetch keeps to one folder of its own in it
(`<models_dir>/clip-axera`, refused if someone else made a folder of that name) and never touches anything
else there. The set goes into `clip-axera/sets/<id>` (files the current set shares hard-linked in, the rest
checksummed and uploaded under temporary names), manifest.json last; then `clip-axera/current`, a symlink,
is switched to it in one rename, all under a lock on the device so that two controllers take turns. A fetch
killed at any point leaves the previous complete set in use, and the next one resumes. The runtime checks the
set against its manifest before loading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from common.contract import JsonFile
from common.errors import ModelFilesError
from common.hashing import sha256_file
from deploy.device_config import DeviceParams, DeviceStage, moved_to_device
from pipeline.config import Strict
from pipeline.errors import PipelineError
from pipeline.hosts import Transport, connect
from pipeline.hosts.remote_lock import exclusive
from pipeline.hosts.sync import TransferSummary, upload
from pipeline.hosts.versioned import VersionedFolder
from pipeline.stage import StageContext, StageResult
from pipeline.terminal import console
from runtime import model_io
from runtime.clip import VOCAB_DIR
from runtime.golden import GOLDEN_DIR, GoldenSet
from runtime.manifest import MANIFEST_FILE, OWN_FOLDER, FileEntry, Manifest

if TYPE_CHECKING:
    from stages.config import PipelineConfig

_BAR_THRESHOLD = 8 * 1024 * 1024  # show a progress bar for files above this size
SWITCH_WAIT_S = 600  # how long a fetch waits for another controller's fetch to the same device


class FetchParams(Strict):
    """fetch has no settings of its own: where it puts the models is `device:`."""


@dataclass(frozen=True)
class TransferRecord(JsonFile, file="transfer.json", made_by="invoke fetch"):
    """What the last fetch did: where the set went, which files travelled and which were already there."""

    host: str
    link: str  # the device's `clip-axera/current`
    set: str  # the set folder it points at
    sent: list[str]
    unchanged: list[str]


class FetchStage(DeviceStage):
    name = "fetch"
    help = "Copy the compiled models, tokenizer and golden data to the device (--host), checksummed."
    after = ("export", "verify", "compile", "embed-vocab")
    outputs = (MANIFEST_FILE,)
    settings = Annotated[FetchParams, BeforeValidator(moved_to_device)]

    def params(self, config: PipelineConfig) -> DeviceParams:
        return DeviceParams.for_device(config)

    def remote_changes(self, params: DeviceParams, artifacts: Path) -> list[str]:
        """The set on the device as fetch left it: its manifest.json the same bytes as ours, every file
        listed there present at its size (sizes only: cheap, no file read on the device)."""
        try:
            manifest = Manifest.read(artifacts / self.name)
        except ModelFilesError as exc:
            return [str(exc)]
        where = f"device {params.host}"
        try:
            with connect(params.host, params.connection) as transport:
                link = VersionedFolder(transport.path(params.models_dir), OWN_FOLDER).link
                remote_manifest = f"{link}/{MANIFEST_FILE}"
                digest = transport.sha256([remote_manifest]).get(remote_manifest)
                sizes = transport.sizes(f"{link}/{name}" for name in manifest.files)
        except PipelineError as exc:
            return [f"{where} not checked: {exc.message}"]
        if digest is None:
            return [f"{where}: {link} holds no model set"]
        if digest != sha256_file(artifacts / self.name / MANIFEST_FILE):
            return [f"{where}: {link} holds another model set"]
        found = {name: sizes.get(f"{link}/{name}") for name in manifest.files}
        return [
            f"{where}: {name} " + ("missing" if found[name] is None else f"is {found[name]:,} bytes, not {e.size:,}")
            for name, e in sorted(manifest.files.items())
            if found[name] != e.size
        ]

    def run(self, ctx: StageContext[DeviceParams]) -> StageResult:
        device = ctx.params
        files = device_files(ctx)
        manifest = Manifest(
            files={name: FileEntry(path.stat().st_size, sha256_file(path)) for name, path in files.items()},
            compile=model_io.CompileReport.read(ctx.upstream("compile")),
        )
        with connect(device.host, device.connection) as transport:
            models = VersionedFolder(transport.path(device.models_dir), OWN_FOLDER)
            if models.claim(transport):
                ctx.log.warning("%s: moved back what an older release had put in %s.sets", device.host, models.parent)
            with exclusive(transport, models.lock, SWITCH_WAIT_S, ctx.log.warning):
                summary = _send_set(transport, models, manifest, files, ctx.out_dir)
        TransferRecord(
            device.host, models.link, models.folder(manifest.set_id), list(summary.sent), list(summary.skipped)
        ).write(ctx.out_dir)
        return StageResult(
            summary=f"{device.host}:{models.link} -> set {manifest.set_id}: {len(summary.sent)} sent "
            f"({summary.bytes_sent / 1e6:.1f} MB), {len(summary.skipped)} unchanged",
            figures={"sent": len(summary.sent), "unchanged": len(summary.skipped), "bytes": summary.bytes_sent},
        )


def _send_set(
    transport: Transport, models: VersionedFolder, manifest: Manifest, files: dict[str, Path], out_dir: Path
) -> TransferSummary:
    """Fill the set's folder (only what changed travels), manifest.json last, then switch to it."""
    folder = models.prepare(transport, manifest.set_id, sorted(files))
    remote = {local: f"{folder}/{name}" for name, local in files.items()}
    with _progress(files) as progress:
        summary = upload(transport, remote, progress)
    manifest_path = out_dir / MANIFEST_FILE
    manifest.write_to(manifest_path)
    upload(transport, {manifest_path: f"{folder}/{MANIFEST_FILE}"})
    models.switch(transport, manifest.set_id)
    return summary


def device_files(ctx: StageContext[DeviceParams]) -> dict[str, Path]:
    """Device-side name -> local file: compiled models, tokenizer/preprocessing, golden inputs."""
    export, compiled = ctx.upstream("export"), ctx.upstream("compile")
    report = model_io.CompileReport.read(compiled)
    files = {report.file(stem): compiled / report.file(stem) for stem in report.models}
    for name in (model_io.TOKENIZER_FILE, model_io.PREPROCESSOR_FILE, model_io.ExportInfo.FILE):
        files[name] = export / name
    vocab = ctx.upstream("embed-vocab")
    for path in sorted(vocab.iterdir()):
        files[f"{VOCAB_DIR}/{path.name}"] = path
    golden = ctx.upstream("verify") / GOLDEN_DIR
    for path in [*sorted(golden.glob("*.npy")), golden / GoldenSet.FILE]:
        files[f"{GOLDEN_DIR}/{path.name}"] = path
    return files


@contextmanager
def _progress(files: dict[str, Path]) -> Iterator[Callable[[int, int], None]]:
    """A rich transfer bar (per file) when the set is big; silent for small sets."""
    total = sum(p.stat().st_size for p in files.values())
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True, disable=total < _BAR_THRESHOLD) as bar:
        task = bar.add_task("fetch", total=None)
        yield lambda done, size: bar.update(task, completed=done, total=size)
