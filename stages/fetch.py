"""fetch: put the compiled models and what the runtime needs beside them on the device.

The device's models dir may be the Stable Diffusion server's own: fetch keeps to one folder of its own in it
(`<models_dir>/clip-axera`, refused if someone else made a folder of that name) and never touches anything
else there. The set goes into `clip-axera/sets/<id>` (files the current set shares hard-linked in, the rest
checksummed and uploaded under temporary names), manifest.json last; then `clip-axera/current`, a symlink,
is switched to it in one rename, all under a lock on the device so that two controllers take turns. A fetch
killed at any point leaves the previous complete set in use, and the next one resumes. The runtime checks the
set against its manifest before loading.

With `devices:` every selected device gets the set at once, a thread each (deploy/fleet.py); one failing
does not stop the others, and the stage fails naming it. Each device's transfer is in
`fetch/devices/<name>/transfer.json`.
"""

from __future__ import annotations

import logging
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
from deploy.device_config import DeviceParams, DeviceStage, FleetParams, moved_to_device
from deploy.fleet import DEVICES_DIR, failures, on_each, print_outcomes
from pipeline.config import Strict
from pipeline.errors import PipelineError, StageError
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
from runtime.tagger import TAGGER_DIR, TAGS_FILE, TaggerInfo
from stages.tagger_compile import TAGGER

if TYPE_CHECKING:
    from stages.config import PipelineConfig

_BAR_THRESHOLD = 8 * 1024 * 1024  # show a progress bar for sets above this size
SWITCH_WAIT_S = 600  # how long a fetch waits for another controller's fetch to the same device


class FetchParams(Strict):
    """fetch has no settings of its own: where it puts the models is `device:`."""


@dataclass(frozen=True)
class TransferRecord(JsonFile, file="transfer.json", made_by="invoke fetch"):
    """What the last fetch did: where the set went, which files travelled and which were already there."""

    device: str
    host: str
    link: str  # the device's `clip-axera/current`
    set: str  # the set folder it points at
    sent: list[str]
    unchanged: list[str]
    bytes: int

    def where(self) -> str:
        return f"{self.host}:{self.link}"


class FetchStage(DeviceStage):
    name = "fetch"
    help = "Copy the compiled models, tokenizer and golden data to the device (--host), checksummed."
    after = ("export", "verify", "compile", "embed-vocab")
    outputs = (MANIFEST_FILE,)
    settings = Annotated[FetchParams, BeforeValidator(moved_to_device)]

    def __init__(self, tagger: bool = False) -> None:
        """With `tagger`, the set carries the compiled WD tagger too, in its own folder (TAGGER_DIR)."""
        self.tagger = tagger
        if tagger:
            self.after = (*FetchStage.after, "tagger-export", "tagger-verify", "tagger-compile")

    def params(self, config: PipelineConfig) -> FleetParams:
        return FleetParams.for_fleet(config)

    def remote_changes(self, params: FleetParams, artifacts: Path) -> list[str]:
        """Each device's set as fetch left it: its manifest.json the same bytes as ours, every file listed
        there present at its size (sizes only: cheap, no file read on the device). Devices asked at once."""
        try:
            manifest = Manifest.read(artifacts / self.name)
        except ModelFilesError as exc:
            return [str(exc)]
        manifest_digest = sha256_file(artifacts / self.name / MANIFEST_FILE)
        outcomes = on_each(params.devices, lambda device: _set_changes(device, manifest, manifest_digest))
        return [
            reason
            for o in outcomes
            for reason in (o.result if o.result is not None else [f"device {o.device} not checked: {o.error}"])
        ]

    def run(self, ctx: StageContext[FleetParams]) -> StageResult:
        files = device_files(ctx) | (tagger_files(ctx) if self.tagger else {})
        manifest = Manifest(
            files={name: FileEntry(path.stat().st_size, sha256_file(path)) for name, path in files.items()},
            compile=model_io.CompileReport.read(ctx.upstream("compile")),
        )
        manifest.write_to(ctx.out_dir / MANIFEST_FILE)
        devices = ctx.params.devices
        with _progress(files, [device.name for device in devices]) as bars:
            outcomes = on_each(
                devices, lambda device: _fetch_to(device, manifest, files, ctx.out_dir, bars[device.name], ctx.log)
            )
        print_outcomes(
            f"fetch to {len(devices)} devices",
            outcomes,
            ("set", "sent", "unchanged", "MB"),
            lambda r: (r.set.rsplit("/", 1)[-1], str(len(r.sent)), str(len(r.unchanged)), f"{r.bytes / 1e6:.1f}"),
        )
        failed = failures(outcomes)
        if failed:
            done = [o.device for o in outcomes if o.ok]
            raise StageError(
                self.name,
                f"{len(failed)} of {len(devices)} devices failed: " + "; ".join(failed),
                hint=f"{', '.join(done)} got set {manifest.set_id}; `--host {','.join(done)}` goes on without the rest"
                if done
                else "",
            )
        records = [o.result for o in outcomes if o.result is not None]
        for record in records:
            record.write(ctx.out_dir / DEVICES_DIR / record.device)
        sent, total_bytes = sum(len(r.sent) for r in records), sum(r.bytes for r in records)
        where = records[0].where() if len(records) == 1 else f"{len(records)} devices"
        return StageResult(
            summary=f"{where} -> set {manifest.set_id}: {sent} sent ({total_bytes / 1e6:.1f} MB), "
            f"{sum(len(r.unchanged) for r in records)} unchanged",
            figures={
                "sent": sent,
                "bytes": total_bytes,
                "devices": {
                    o.device: {
                        "set": manifest.set_id,
                        "sent": len(o.result.sent),
                        "bytes": o.result.bytes,
                        "seconds": round(o.seconds, 3),
                    }
                    for o in outcomes
                    if o.result is not None
                },
            },
        )


def _set_changes(device: DeviceParams, manifest: Manifest, manifest_digest: str) -> list[str]:
    where = f"device {device.name}"
    try:
        with connect(device.host, device.connection) as transport:
            link = VersionedFolder(transport.path(device.models_dir), OWN_FOLDER).link
            remote_manifest = f"{link}/{MANIFEST_FILE}"
            digest = transport.sha256([remote_manifest]).get(remote_manifest)
            sizes = transport.sizes(f"{link}/{name}" for name in manifest.files)
    except PipelineError as exc:
        return [f"{where} not checked: {exc.message}"]
    if digest is None:
        return [f"{where}: {link} holds no model set"]
    if digest != manifest_digest:
        return [f"{where}: {link} holds another model set"]
    found = {name: sizes.get(f"{link}/{name}") for name in manifest.files}
    return [
        f"{where}: {name} " + ("missing" if found[name] is None else f"is {found[name]:,} bytes, not {e.size:,}")
        for name, e in sorted(manifest.files.items())
        if found[name] != e.size
    ]


def _fetch_to(
    device: DeviceParams,
    manifest: Manifest,
    files: dict[str, Path],
    out_dir: Path,
    progress: Callable[[int, int], None],
    log: logging.Logger,
) -> TransferRecord:
    with connect(device.host, device.connection) as transport:
        models = VersionedFolder(transport.path(device.models_dir), OWN_FOLDER)
        if models.claim(transport):
            log.warning("%s: moved back what an older release had put in %s.sets", device.host, models.parent)
        with exclusive(transport, models.lock, SWITCH_WAIT_S, log.warning):
            summary = _send_set(transport, models, manifest, files, out_dir, progress)
    return TransferRecord(
        device.name,
        device.host,
        models.link,
        models.folder(manifest.set_id),
        list(summary.sent),
        list(summary.skipped),
        summary.bytes_sent,
    )


def _send_set(
    transport: Transport,
    models: VersionedFolder,
    manifest: Manifest,
    files: dict[str, Path],
    out_dir: Path,
    progress: Callable[[int, int], None],
) -> TransferSummary:
    """Fill the set's folder (only what changed travels), manifest.json last, then switch to it."""
    folder = models.prepare(transport, manifest.set_id, sorted(files))
    remote = {local: f"{folder}/{name}" for name, local in files.items()}
    summary = upload(transport, remote, progress)
    upload(transport, {out_dir / MANIFEST_FILE: f"{folder}/{MANIFEST_FILE}"})
    models.switch(transport, manifest.set_id)
    return summary


def device_files(ctx: StageContext[FleetParams]) -> dict[str, Path]:
    """Device-side name -> local file: compiled models, tokenizer/preprocessing, golden inputs."""
    export, compiled = ctx.upstream("export"), ctx.upstream("compile")
    report = model_io.CompileReport.read(compiled)
    files = {report.file(stem): compiled / report.file(stem) for stem in report.models}
    for name in (model_io.TOKENIZER_FILE, model_io.PREPROCESSOR_FILE, model_io.ExportInfo.FILE):
        files[name] = export / name
    vocab = ctx.upstream("embed-vocab")
    for path in sorted(vocab.iterdir()):
        files[f"{VOCAB_DIR}/{path.name}"] = path
    return files | _golden_files(ctx.upstream("verify") / GOLDEN_DIR, GOLDEN_DIR)


def tagger_files(ctx: StageContext[FleetParams]) -> dict[str, Path]:
    """Device-side name -> local file for the tagger's folder in the set: the compiled model as model.* (what
    runtime/tagger.py opens), its tag list and facts, and tagger-verify's golden photos for the smoke test."""
    compiled, export = ctx.upstream("tagger-compile"), ctx.upstream("tagger-export")
    model = model_io.CompileReport.read(compiled).file(TAGGER)
    files = {f"{TAGGER_DIR}/model{Path(model).suffix}": compiled / model}
    for name in (TAGS_FILE, TaggerInfo.FILE):
        files[f"{TAGGER_DIR}/{name}"] = export / name
    return files | _golden_files(ctx.upstream("tagger-verify") / GOLDEN_DIR, f"{TAGGER_DIR}/{GOLDEN_DIR}")


def _golden_files(golden: Path, folder: str) -> dict[str, Path]:
    """A golden set's arrays and golden.json, under `folder` on the device."""
    return {f"{folder}/{path.name}": path for path in [*sorted(golden.glob("*.npy")), golden / GoldenSet.FILE]}


@contextmanager
def _progress(files: dict[str, Path], devices: list[str]) -> Iterator[dict[str, Callable[[int, int], None]]]:
    """A rich transfer bar (per file) for each device when the set is big; silent for small sets."""
    total = sum(p.stat().st_size for p in files.values())
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True, disable=total < _BAR_THRESHOLD) as bar:
        tasks = {name: bar.add_task(f"fetch {name}", total=None) for name in devices}
        yield {
            name: lambda done, size, task=task: bar.update(task, completed=done, total=size)
            for name, task in tasks.items()
        }
