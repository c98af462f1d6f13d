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
from runtime.clip import ClipRuntime, model_files
from runtime.errors import RuntimeErrorBase
from runtime.similarity import cosine

GOLDEN_DIR = "golden"


def run_smoke_test(models_dir: Path, runs: int, provider: str | None, device_id: int) -> dict[str, Any]:
    clip = ClipRuntime.load(models_dir, provider=provider, device_id=device_id)
    golden = models_dir / GOLDEN_DIR
    encoders = {}
    for part, backend, input_name, output_name in (
        ("image", clip.image, model_io.IMAGE_INPUT, model_io.IMAGE_OUTPUT),
        ("text", clip.text, model_io.TEXT_INPUT, model_io.TEXT_OUTPUT),
    ):
        assert backend is not None
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
        encoders[part] = {
            "model": model_files(clip.models_dir, clip.info)[part],
            "backend": backend.name,
            "provider": backend.provider,
            "input_dtype": str(backend.inputs[0].dtype),
            "cosine_min": min(cosines),
            "cosines": cosines,
            "latency_ms": {
                "p50": float(np.percentile(latencies, 50)),
                "p95": float(np.percentile(latencies, 95)),
                "runs": runs,
            },
        }
    return {
        "models_dir": str(models_dir),
        "encoders": encoders,
        "peak_rss_mb": _peak_rss_mb(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


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
    args = parser.parse_args(argv)
    try:
        report = run_smoke_test(args.models, args.runs, args.provider, args.device_id)
        code = 0
    except (RuntimeErrorBase, FileNotFoundError) as exc:
        report, code = {"error": str(exc)}, 2
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"error": report["error"]} if code else {"ok": True}))
    return code


if __name__ == "__main__":
    sys.exit(main())
