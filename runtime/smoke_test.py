"""The smoke test that runs on the device: `python -m runtime.smoke_test --models DIR`.

Runs the compiled encoders on the golden inputs from verify, compares with the float reference
(cosine, and whether the captions pick the same labels: runtime/agreement.py), times N runs (p50/p95),
reads the peak RSS, and writes one JSON report. Exit 0 when the
report was written (thresholds are judged by the controller), 2 when the models cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.contract import JsonFile
from common.errors import UserError
from runtime import model_io
from runtime.agreement import PickAgreement, TagAgreement, pick_agreement, tag_agreement
from runtime.backends import open_backend
from runtime.clip import VOCAB_DIR, model_files
from runtime.golden import GOLDEN_DIR, GoldenSet
from runtime.label_tables import LabelTables
from runtime.manifest import model_set
from runtime.npu import NpuLock
from runtime.similarity import cosine
from runtime.tagger import TAGGER_DIR, TAGS_FILE, TaggerInfo, TagList, TagThresholds, model_file

LOCK_WAIT_S = 600  # the smoke test waits this long for another program to free the NPU


@dataclass(frozen=True)
class Latency:
    p50: float
    p95: float
    runs: int
    samples: tuple[float, ...]


@dataclass(frozen=True)
class EncoderCheck:
    """One compiled encoder on the device: what ran it, how close to float, how fast, what it cost."""

    model: str
    load_s: float
    resident_mb: float  # host memory the loaded session added (NPU memory aside)
    backend: str
    provider: str
    input_dtype: str
    cosine_min: float
    cosines: tuple[float, ...]
    latency_ms: Latency


# What the smoke report names of the device's venv (installed from runtime/constraints.txt; axengine from
# Axera's wheel): the versions that ran the models.
RUNTIME_PACKAGES = ("numpy", "pillow", "tokenizers", "onnxruntime", "axengine", "fastapi", "uvicorn", "distributed")


@dataclass(frozen=True)
class SmokeReport(JsonFile, file="measurements.json", made_by="invoke smoke-test"):
    """What the device measured, or why it could not (`error`); the controller judges it."""

    error: str | None = None
    models_dir: str = ""
    encoders: dict[str, EncoderCheck] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    python: str = ""
    machine: str = ""
    npu_lock: str | None = None
    packages: dict[str, str] = field(default_factory=dict)  # what the device's venv ran with (runtime lock's)
    agreement: PickAgreement | None = None  # the device's picks against the float model's, on verify's photos
    tag_agreement: TagAgreement | None = None  # the set's tagger's tags against the float model's, if it has one

    ENCODER_COLUMNS = ("encoder", "backend", "cosine vs float (min)", "p50 ms", "p95 ms", "load, host memory")

    def encoder_rows(self) -> list[tuple[str, ...]]:
        """A row per encoder: the table the terminal and the report page show."""
        return [
            (
                part,
                f"{encoder.backend} ({encoder.provider})",
                f"{encoder.cosine_min:.5f}",
                f"{encoder.latency_ms.p50:.2f}",
                f"{encoder.latency_ms.p95:.2f}",
                f"{encoder.load_s:.2f} s, +{encoder.resident_mb:.0f} MB",
            )
            for part, encoder in self.encoders.items()
        ]


def run_smoke_test(
    models_dir: Path,
    runs: int,
    provider: str | None,
    device_id: int,
    npu: NpuLock | None = None,
    thresholds: TagThresholds | None = None,
) -> SmokeReport:
    """Each encoder loaded on its own (load time and the host memory it adds: what is left for a Stable
    Diffusion model beside it), then run on the golden inputs, holding the NPU lock throughout."""
    npu = npu or NpuLock()
    models_dir = model_set(models_dir)  # one set throughout, even if a fetch swaps the link meanwhile
    info = model_io.ExportInfo.read(models_dir)
    files = model_files(models_dir, info, verify_hashes=True)  # the check after a fetch: every byte
    golden_dir = models_dir / GOLDEN_DIR
    golden = GoldenSet.read(golden_dir)
    encoders, outputs = {}, {}
    with npu.hold(LOCK_WAIT_S):
        for part in ("image", "text"):
            tensors = info.encoder(part)
            inputs, reference = golden.pair(golden_dir, tensors.output.name)
            print(f"{part} encoder: loading, then {len(inputs)} golden inputs and {runs} timed runs", flush=True)
            encoders[part], outputs[part] = _check_encoder(
                models_dir / files[part],
                inputs,
                reference,
                tensors.input.name,
                tensors.output.name,
                runs,
                provider,
                device_id,
            )
    image_output = info.encoder("image").output.name
    photos = golden.references[image_output].labels
    print(f"captioning {len(photos)} photos from the float and the device embeddings", flush=True)
    agreement = pick_agreement(
        LabelTables.load(models_dir / VOCAB_DIR), photos, golden.pair(golden_dir, image_output)[1], outputs["image"]
    )
    tags = None
    if (models_dir / TAGGER_DIR).is_dir():
        with npu.hold(LOCK_WAIT_S):
            encoders["tagger"], tags = _check_tagger(
                models_dir / TAGGER_DIR, runs, provider, device_id, thresholds or TagThresholds()
            )
    return SmokeReport(
        models_dir=str(models_dir),
        encoders=encoders,
        agreement=agreement,
        tag_agreement=tags,
        peak_rss_mb=_peak_rss_mb(),
        python=platform.python_version(),
        machine=platform.machine(),
        npu_lock=str(npu.lock_file) if npu.lock_file else None,
        packages=_package_versions(),
    )


def _check_tagger(
    folder: Path, runs: int, provider: str | None, device_id: int, thresholds: TagThresholds
) -> tuple[EncoderCheck, TagAgreement]:
    """The set's tagger on its golden photos: its figures, and its tags against the float model's."""
    info = TaggerInfo.read(folder)
    model = model_file(folder)
    golden = GoldenSet.read(folder / GOLDEN_DIR)
    inputs, reference = golden.pair(folder / GOLDEN_DIR, info.output)
    print(f"tagger: loading, then {len(inputs)} golden photos and {runs} timed runs", flush=True)
    check, outputs = _check_encoder(model, inputs, reference, info.input, info.output, runs, provider, device_id)
    photos = golden.references[info.output].labels
    return check, tag_agreement(TagList.read(folder / TAGS_FILE), thresholds, photos, reference, outputs)


def _package_versions() -> dict[str, str]:
    """The versions of the runtime's own packages this process imports (those installed)."""
    found = {}
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _check_encoder(
    model: Path,
    inputs: np.ndarray,
    reference: np.ndarray,
    input_name: str,
    output_name: str,
    runs: int,
    provider: str | None,
    device_id: int,
) -> tuple[EncoderCheck, np.ndarray]:
    """The encoder's figures, and its outputs for the golden inputs (a row each)."""
    rss_before = _current_rss_mb()
    started = time.perf_counter()
    backend = open_backend(model, provider, device_id)
    load_s = time.perf_counter() - started
    resident_mb = _current_rss_mb() - rss_before
    outputs = np.stack([backend.run({input_name: row[None]})[output_name][0] for row in inputs])
    cosines = [cosine(got, ref) for got, ref in zip(outputs, reference, strict=True)]
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.run({input_name: inputs[:1]})
        latencies.append((time.perf_counter() - started) * 1e3)
    check = EncoderCheck(
        model=model.name,
        load_s=round(load_s, 3),
        resident_mb=round(resident_mb, 1),
        backend=backend.name,
        provider=backend.provider,
        input_dtype=str(backend.inputs[0].dtype),
        cosine_min=min(cosines),
        cosines=tuple(cosines),
        latency_ms=Latency(
            p50=float(np.percentile(latencies, 50)),
            p95=float(np.percentile(latencies, 95)),
            runs=runs,
            samples=tuple(round(value, 4) for value in latencies),
        ),
    )
    return check, outputs


def _current_rss_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _bars(text: str) -> TagThresholds:
    try:
        general, character = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GENERAL,CHARACTER such as 0.35,0.85, got {text!r}") from None
    return TagThresholds(general, character)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CLIP smoke test on this device")
    parser.add_argument("--models", type=Path, required=True, help="models dir laid out by `invoke fetch`")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--provider", default=None)
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--npu-lock", type=Path, help="hold an exclusive flock on this file while on the NPU")
    parser.add_argument(
        "--tag-thresholds", type=_bars, default=TagThresholds(), help="GENERAL,CHARACTER: the set's tagger's bars"
    )
    args = parser.parse_args(argv)
    try:
        npu = NpuLock(args.npu_lock)
        report = run_smoke_test(args.models, args.runs, args.provider, args.device_id, npu, args.tag_thresholds)
    except (UserError, FileNotFoundError) as exc:
        report = SmokeReport(error=str(exc))
    report.write_to(args.report)
    if report.error:
        print(f"smoke test: {report.error}", file=sys.stderr)
    return 2 if report.error else 0


if __name__ == "__main__":
    sys.exit(main())
