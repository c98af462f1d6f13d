"""POST /clip/v1/classify's cost per request: an image against 10, 100 and 1,000 labels the server has
never seen (each one text encode), then the same labels again (from the label cache: no encode), on the
full-size ViT-B/32 shapes (random weights) beside a 20,000-label vocabulary.

Two encoders: this machine's onnxruntime CPU, and the NPU-class stand-in of bench/prompt_modes.py (waits
that hold no core: NPU_FLOOR_MS per image, TEXT_MS per text). Expected: new labels cost about one text
encode each; cached ones about nothing beyond the image encode.

    python bench/classify.py [--rounds 3] [--json]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from harness import REPO, arguments, emit, full_size_export, median_ms, write_random_tables
from inputs import NPU_FLOOR_MS
from prompt_modes import TEXT_MS, npu_class

from runtime.classify import Classifier, ClassifyLimits, Question
from runtime.clip import ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_cache import CacheSettings
from runtime.label_tables import CategoryMode, LabelTables, normalize
from runtime.preprocess import open_image

SIZES = (10, 100, 1_000)
CATEGORIES = {"subject": (CategoryMode.ONE, 2_000), "tags": (CategoryMode.MANY, 18_000)}


def request_ms(interrogator: Interrogator, classifier: Classifier, pixels, question: Question) -> tuple[float, int]:
    """One request as the service answers it: the image encode, then the question."""
    started = time.perf_counter()
    embedding, _ = interrogator.embed(pixels)
    answer = classifier.classify(normalize(embedding), question)
    return time.perf_counter() - started, answer.text_encodes


def main() -> None:
    args = arguments(__doc__, rounds=3)
    export = full_size_export()
    tables = LabelTables.load(write_random_tables(export, "classify", CATEGORIES))
    rows, figures = [], {}
    for encoder in ("CPU onnxruntime", f"NPU-class ({NPU_FLOOR_MS:g} ms image, {TEXT_MS:g} ms text)"):
        clip = ClipRuntime.load(export)
        interrogator = Interrogator(clip if encoder.startswith("CPU") else npu_class(clip), tables)
        pixels = clip.preprocess(open_image(REPO / "data/images/cat.jpg"))
        figures[encoder] = {}
        with tempfile.TemporaryDirectory() as cache:
            limits = ClassifyLimits(max_labels=max(SIZES), max_text_encodes=max(SIZES))
            classifier = Classifier.open(interrogator, limits, CacheSettings(folder=Path(cache)))
            for size in SIZES:
                new, cached = [], []
                for round_ in range(args.rounds):
                    question = Question.of_labels([f"label {round_} {size} {i}" for i in range(size)])
                    seconds, encodes = request_ms(interrogator, classifier, pixels, question)
                    assert encodes == size
                    new.append(seconds)
                    seconds, encodes = request_ms(interrogator, classifier, pixels, question)
                    assert encodes == 0
                    cached.append(seconds)
                figures[encoder][size] = {"new_ms": median_ms(new), "cached_ms": median_ms(cached)}
                rows.append((encoder, size, median_ms(new), median_ms(cached), round(median_ms(new) / size, 2)))
    title = "classify per request (image encode included), ViT-B/32 shapes, 20,000-label tables"
    emit(figures, args.json, title, ("encoder", "labels", "new: median ms", "cached: median ms", "ms per new"), rows)


if __name__ == "__main__":
    main()
