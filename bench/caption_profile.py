"""Where a caption's CPU goes, step by step, and how much of the NPU's rate `invoke caption` reaches.

1024x768 camera-like JPEGs, ViT-B/32 shapes, tables shaped as the default vocabulary (its caption
categories, and clip-interrogator's lists outside the caption), the NPU-class stand-in (an encode is a
NPU_FLOOR_MS wait that holds no core: bench/inputs.py). First each step alone, one image at a time, as
core-ms per image (process CPU time, so a step's threads count); then `invoke caption`'s pipeline
(runtime.captioning: decode threads ahead of the encoder) on the same folder, as images/s and as a share
of the NPU's bound, 1000 / NPU_FLOOR_MS images/s.

    python bench/caption_profile.py [--images 120] [--json]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caption import npu_class
from coarse_rank import CAPTION, CLIP_INTERROGATOR
from harness import arguments, emit, full_size_export, write_random_tables
from inputs import NPU_FLOOR_MS, photo_folder
from PIL import Image

from runtime.captioning import CaptionRun, caption_folder
from runtime.clip import ClipRuntime
from runtime.interrogator import CaptionOptions, CategoryResult, Interrogator, Scores, caption
from runtime.label_tables import LabelTables

SIZE = (1024, 768)


def step_costs(interrogator: Interrogator, photos: list[Path], out: Path) -> dict[str, float]:
    """Core-ms per image of each step, run alone, one image after another."""
    clip, options = interrogator.clip, CaptionOptions(every_category=False)
    totals = dict.fromkeys(("decode", "preprocess", "encode (CPU side)", "rank", "format", "write"), 0.0)

    def timed(step: str, work: Callable[[], Any]) -> Any:
        started = time.process_time()
        result = work()
        totals[step] += time.process_time() - started
        return result

    for index, path in enumerate(photos):
        image = timed("decode", lambda p=path: _loaded(clip.open(p)))
        pixels = timed("preprocess", lambda i=image: clip.preprocess(i))
        vector = timed("encode (CPU side)", lambda p=pixels: interrogator.embed(p)[0])
        scores = Scores.of(interrogator.tables, vector)
        _, results = timed("rank", lambda s=scores: caption(s, options))
        text = timed("format", lambda r=results: options.format.format(_picks(r)))
        timed("write", lambda t=text, i=index: (out / f"{i}.txt").write_text(t + "\n", encoding="utf-8"))
    return {step: seconds / len(photos) * 1e3 for step, seconds in totals.items()}


def _loaded(image: Image.Image) -> Image.Image:
    image.load()
    return image


def _picks(results: tuple[CategoryResult, ...]) -> list[tuple[str, float]]:
    return [(pick.label, pick.score) for result in results for pick in result.picks]


def main() -> None:
    args = arguments(__doc__, images=120)
    export = full_size_export()
    lists = frozenset(CLIP_INTERROGATOR)
    tables = LabelTables.load(write_random_tables(export, "profile", {**CAPTION, **CLIP_INTERROGATOR}, lists))
    folder = photo_folder(SIZE, args.images)
    photos = sorted(folder.glob("*.jpg"))
    interrogator = Interrogator(npu_class(ClipRuntime.load(export)), tables)
    bound = 1000 / NPU_FLOOR_MS
    with tempfile.TemporaryDirectory() as scratch:
        costs = step_costs(interrogator, photos[:40], Path(scratch))
        out = Path(scratch) / "captions"
        caption_folder(interrogator, CaptionRun(folder, out))  # warm: pools, caches
        shutil.rmtree(out)
        started = time.perf_counter()
        summary = caption_folder(interrogator, CaptionRun(folder, out))
        rate = summary.captioned / (time.perf_counter() - started)
    cpu = sum(v for k, v in costs.items() if k != "encode (CPU side)")
    rows = [(step, f"{ms:.2f}") for step, ms in costs.items()]
    rows += [("CPU per image, all steps", f"{cpu:.2f}"), ("NPU-class encode (wall)", f"{NPU_FLOOR_MS:g}")]
    rows += [("invoke caption: images/s", f"{rate:.1f}"), ("share of the NPU's bound", f"{rate / bound:.0%}")]
    figures = {"core_ms_per_image": costs, "images_per_s": rate, "share_of_npu_bound": rate / bound}
    title = f"caption profile: {args.images} JPEGs of {SIZE[0]}x{SIZE[1]}, ViT-B/32 shapes, default vocabulary"
    emit(figures, args.json, title, ("step", "core-ms per image / figure"), rows)


if __name__ == "__main__":
    main()
