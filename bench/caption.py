"""Caption throughput on a folder of 12 MP JPEGs: before (each image decoded and preprocessed exactly,
then encoded, one after another) vs now (`invoke caption`'s runtime.captioning: fast fidelity, a pool
of decode threads ahead of the one encoder, results written in order).

Two encoders: this machine's onnxruntime CPU encode of ViT-B/32 (it competes with decoding for the
cores), and an NPU-class stand-in that waits NPU_FLOOR_MS without using a core, as the AX650 does
(see bench/inputs.py for the figure's source). Target (issue 15): >= 4x the images per second.

    python bench/caption.py [--images 12] [--json]
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from harness import DEFAULT_CACHE, arguments, emit, full_size_export, verdict, write_tables
from inputs import NPU_FLOOR_MS, photo_folder

from runtime.captioning import CaptionRun, caption_folder
from runtime.clip import ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables
from runtime.preprocess import Fidelity, open_image, preprocess

TARGET = 4.0
LABELS = 10_000


def before(interrogator: Interrogator, folder: Path) -> None:
    """The loop `invoke caption` ran before: exact decode and preprocess, encode, next image."""
    for path in sorted(folder.glob("*.jpg")):
        interrogator.interrogate(preprocess(open_image(path), interrogator.clip.preprocess_config))


def now(interrogator: Interrogator, folder: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    caption_folder(interrogator, CaptionRun(folder, out))


def npu_class(clip: ClipRuntime) -> ClipRuntime:
    """The same runtime, its encode a wait that holds no core (what an NPU encode costs the CPU)."""
    embedding = np.random.default_rng(0).normal(size=clip.info.projection_dim).astype(np.float32)

    def encode(pixels: np.ndarray) -> np.ndarray:
        time.sleep(NPU_FLOOR_MS / 1e3)
        return embedding

    clip.encode_pixels = encode  # type: ignore[method-assign]
    return clip


def main() -> None:
    args = arguments(__doc__, images=12)
    export = full_size_export()
    tables = LabelTables.load(write_tables(export, LABELS))
    folder, out = photo_folder((4032, 3024), args.images), DEFAULT_CACHE / "caption-out"
    rows, figures = [], {"images": args.images}
    for encoder in ("CPU onnxruntime", f"NPU-class ({NPU_FLOOR_MS:g} ms)"):
        clip = ClipRuntime.load(export, fidelity=Fidelity.FAST)
        interrogator = Interrogator(clip if encoder.startswith("CPU") else npu_class(clip), tables)
        before(interrogator, folder)  # warm-up: caches, thread pools
        started = time.perf_counter()
        before(interrogator, folder)
        middle = time.perf_counter()
        now(interrogator, folder, out)
        rates = {"before": args.images / (middle - started), "now": args.images / (time.perf_counter() - middle)}
        ratio = rates["now"] / rates["before"]
        figures[encoder] = {
            "before_images_per_s": round(rates["before"], 2),
            "now_images_per_s": round(rates["now"], 2),
            "ratio": round(ratio, 2),
        }
        rows.append((encoder, f"{rates['before']:.2f}", f"{rates['now']:.2f}", f"{ratio:.2f}"))
    figures["meets_target"] = figures["CPU onnxruntime"]["ratio"] >= TARGET
    title = f"caption throughput, {args.images} JPEGs of 4032x3024, ViT-B/32 shapes, {LABELS:,} labels"
    emit(
        figures,
        args.json,
        title,
        ("encoder", "before img/s", "now img/s", "x"),
        rows,
        f"target: >= {TARGET}x on this machine's encoder: {verdict(figures['meets_target'])}",
    )


if __name__ == "__main__":
    main()
