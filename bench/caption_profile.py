"""Where a caption's CPU goes, step by step, and how much of the NPU's rate `invoke caption` reaches.

1024x768 camera-like JPEGs, ViT-B/32 shapes, the NPU-class stand-in (an encode is a NPU_FLOOR_MS wait that
holds no core: bench/inputs.py), two vocabularies: the default one (its caption categories, and
clip-interrogator's lists beside them, outside the caption) and clip-interrogator's own, whose caption
ranks all of its 112k labels. First each step alone, as core-ms per image (process CPU time, so a step's
threads count); ranking both one image at a time and RANK_BATCH at once, as `invoke caption` ranks the
images waiting behind the encoder. Then `invoke caption` itself (runtime.captioning: decode threads ahead
of the encoder, ranking and writing behind it) on the same folder, as images/s and as a share of the NPU's
bound, 1000 / NPU_FLOOR_MS images/s. Targets (issue 41): >= 90% with the default vocabulary, >= 70% with
the 112k labels.

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
from harness import arguments, emit, full_size_export, verdict, write_random_tables
from inputs import NPU_FLOOR_MS, photo_folder
from PIL import Image
from prompt_modes import CATEGORIES

from runtime.captioning import RANK_BATCH, CaptionRun, CaptionTask, caption_folder
from runtime.clip import ClipRuntime
from runtime.interrogator import CaptionOptions, Interrogator
from runtime.label_tables import LabelTables

SIZE = (1024, 768)
TARGETS = {"default vocabulary": 0.9, "clip-interrogator (112k labels)": 0.7}


def core_ms(work: Callable[[], Any], images: int) -> tuple[Any, float]:
    started = time.process_time()
    result = work()
    return result, (time.process_time() - started) / images * 1e3


def image_steps(clip: ClipRuntime, photos: list[Path]) -> tuple[list, dict[str, float]]:
    """Decode and preprocess alone, one image after another; the pixels for the next steps."""
    images, decode = core_ms(lambda: [_loaded(clip.open(path)) for path in photos], len(photos))
    pixels, preprocess = core_ms(lambda: [clip.preprocess(image) for image in images], len(photos))
    return pixels, {"decode": decode, "preprocess": preprocess}


def rank_steps(interrogator: Interrogator, encoded: list, out: Path) -> dict[str, float]:
    """Ranking and formatting (CaptionTask, as `invoke caption` runs it) one image at a time and RANK_BATCH
    at once, and writing the caption files."""
    task = CaptionTask(interrogator, CaptionOptions(every_category=False))
    task.finish_all(encoded)  # warm: the rows the exact pass reads, onnxruntime's arenas
    _, alone = core_ms(lambda: [task.finish_all([item]) for item in encoded], len(encoded))
    batches = [encoded[start : start + RANK_BATCH] for start in range(0, len(encoded), RANK_BATCH)]
    answers, batched = core_ms(lambda: [a for b in batches for a in task.finish_all(b)], len(encoded))
    texts = [answer[0] for answer in answers]
    _, write = core_ms(
        lambda: [(out / f"{i}.txt").write_text(f"{t}\n", encoding="utf-8") for i, t in enumerate(texts)], len(texts)
    )
    return {
        "rank + format, one image at a time": alone,
        f"rank + format, {RANK_BATCH} at once": batched,
        "write": write,
    }


def _loaded(image: Image.Image) -> Image.Image:
    image.load()
    return image


def caption_rate(interrogator: Interrogator, folder: Path, scratch: Path) -> float:
    """`invoke caption`'s images/s on the folder, after a warm-up run (pools, caches)."""
    out = scratch / "captions"
    caption_folder(interrogator, CaptionRun(folder, out))
    shutil.rmtree(out)
    started = time.perf_counter()
    summary = caption_folder(interrogator, CaptionRun(folder, out))
    rate = summary.captioned / (time.perf_counter() - started)
    shutil.rmtree(out)
    return rate


def main() -> None:
    args = arguments(__doc__, images=120)
    export = full_size_export()
    vocabularies = {
        "default vocabulary": write_random_tables(
            export, "profile", {**CAPTION, **CLIP_INTERROGATOR}, frozenset(CLIP_INTERROGATOR)
        ),
        "clip-interrogator (112k labels)": write_random_tables(export, "clip-interrogator", CATEGORIES),
    }
    folder = photo_folder(SIZE, args.images)
    photos = sorted(folder.glob("*.jpg"))[:40]
    clip = npu_class(ClipRuntime.load(export))
    pixels, steps = image_steps(clip, photos)
    bound = 1000 / NPU_FLOOR_MS
    figures: dict[str, Any] = {"core_ms_per_image": steps, "npu_floor_ms": NPU_FLOOR_MS, "vocabularies": {}}
    rows = [(step, f"{ms:.2f}") for step, ms in steps.items()]
    with tempfile.TemporaryDirectory() as scratch:
        for name, tables in vocabularies.items():
            interrogator = Interrogator(clip, LabelTables.load(tables))
            encoded = [interrogator.embed(p) for p in pixels]
            ranks = rank_steps(interrogator, encoded, Path(scratch))
            rate = caption_rate(interrogator, folder, Path(scratch))
            figures["vocabularies"][name] = {
                "core_ms_per_image": ranks,
                "images_per_s": round(rate, 1),
                "share_of_npu_bound": round(rate / bound, 3),
                "meets_target": rate / bound >= TARGETS[name],
            }
            rows += [(f"{step} ({name})", f"{ms:.2f}") for step, ms in ranks.items()]
            rows += [(f"invoke caption, {name}: images/s", f"{rate:.1f} ({rate / bound:.0%} of the NPU's bound)")]
    verdicts = "; ".join(
        f"{name} >= {TARGETS[name]:.0%}: {verdict(v['meets_target'])}" for name, v in figures["vocabularies"].items()
    )
    title = (
        f"caption profile: {args.images} JPEGs of {SIZE[0]}x{SIZE[1]}, ViT-B/32 shapes, NPU-class {NPU_FLOOR_MS:g} ms"
    )
    emit(figures, args.json, title, ("step (core-ms per image) / figure", "value"), rows, verdicts)


if __name__ == "__main__":
    main()
