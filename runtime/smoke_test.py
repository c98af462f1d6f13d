"""The smoke test that runs on the device: `python -m runtime.smoke_test --models DIR`.

Runs the compiled encoders on the golden inputs from verify, compares with the float reference
(cosine), times N runs (p50/p95), reads the peak RSS, and writes one JSON report. Exit 0 when the
report was written (thresholds are judged by the controller), 2 when the models cannot run here.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import model_io
from runtime.backends import open_backend
from runtime.clip import model_files
from runtime.errors import RuntimeErrorBase
from runtime.npu import NpuLock
from runtime.similarity import cosine

GOLDEN_DIR = "golden"
LOCK_WAIT_S = 600  # the smoke test waits this long for another program to free the NPU


def run_smoke_test(
    models_dir: Path, runs: int, provider: str | None, device_id: int, npu: NpuLock | None = None
) -> dict[str, Any]:
    """Each encoder loaded on its own (load time and the host memory it adds: what is left for a Stable
    Diffusion model beside it), then run on the golden inputs, holding the NPU lock throughout."""
    npu = npu or NpuLock()
    models_dir = models_dir.resolve()  # one set throughout, even if a fetch swaps the link meanwhile
    info = model_io.ExportInfo.read(models_dir)
    files = model_files(models_dir, info, verify_hashes=True)  # the check after a fetch: every byte
    golden = models_dir / GOLDEN_DIR
    encoders = {}
    with npu.hold(LOCK_WAIT_S):
        for part, input_name, output_name in (
            ("image", model_io.IMAGE_INPUT, model_io.IMAGE_OUTPUT),
            ("text", model_io.TEXT_INPUT, model_io.TEXT_OUTPUT),
        ):
            encoders[part] = _check_encoder(models_dir / files[part], golden, input_name, output_name, runs,
                                            provider, device_id)  # fmt: skip
    return {
        "models_dir": str(models_dir),
        "encoders": encoders,
        "peak_rss_mb": _peak_rss_mb(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "npu_lock": str(npu.lock_file) if npu.lock_file else None,
    }


def _check_encoder(
    model: Path, golden: Path, input_name: str, output_name: str, runs: int, provider: str | None, device_id: int
) -> dict[str, Any]:
    rss_before = _current_rss_mb()
    started = time.perf_counter()
    backend = open_backend(model, provider, device_id)
    load_s = time.perf_counter() - started
    resident_mb = _current_rss_mb() - rss_before
    inputs = np.load(golden / f"{input_name}.npy")
    reference = np.load(golden / f"{output_name}.npy")
    cosines = [
        cosine(backend.run({input_name: row[None]})[output_name][0], ref)
        for row, ref in zip(inputs, reference, strict=True)
    ]
    latencies = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.run({input_name: inputs[:1]})
        latencies.append((time.perf_counter() - started) * 1e3)
    return {
        "model": model.name,
        "load_s": round(load_s, 3),
        "resident_mb": round(resident_mb, 1),  # host memory the loaded session added (NPU memory aside)
        "backend": backend.name,
        "provider": backend.provider,
        "input_dtype": str(backend.inputs[0].dtype),
        "cosine_min": min(cosines),
        "cosines": cosines,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
            "runs": runs,
            "samples": [round(value, 4) for value in latencies],
        },
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CLIP smoke test on this device")
    parser.add_argument("--models", type=Path, required=True, help="models dir laid out by `invoke fetch`")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--provider", default=None)
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--npu-lock", type=Path, help="hold an exclusive flock on this file while on the NPU")
    args = parser.parse_args(argv)
    try:
        npu = NpuLock(args.npu_lock)
        report = run_smoke_test(args.models, args.runs, args.provider, args.device_id, npu)
        code = 0
    except (RuntimeErrorBase, FileNotFoundError) as exc:
        report, code = {"error": str(exc)}, 2
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"error": report["error"]} if code else {"ok": True}))
    return code


if __name__ == "__main__":
    sys.exit(main())
