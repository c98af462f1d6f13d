"""A WD tagger's CPU side per image on the device: preparing the input (composite, pad to a square on
white, bicubic to 448, BGR NHWC uint8; runtime/tagger.py) for a 1024x768 camera JPEG and a 512x512 SD
PNG, and reading the answer (ratings, general and character tags above their bars) out of 10,861
probabilities, as many as the v3 taggers' selected_tags.csv lists. Beside it, the NPU's side: Axera
publishes ~6 ms on the AX650 for ViT-B/16 at 224 (196 tokens); wd-vit-tagger-v3 is ViT-B/16 at 448, four
times the tokens, so at least 4 x 6 = 24 ms (an estimate by token count, attention grows faster: no
tagger figure is published). The tagger's images/s on one device is then bound by the larger side.

    python bench/tagger.py [--rounds 30] [--json]
"""

from __future__ import annotations

import time

import numpy as np
from harness import arguments, emit, median_ms
from inputs import camera_like

from runtime.images import ImagePolicy, open_image_bytes
from runtime.tagger import CHARACTER, GENERAL, RATING, TagList, TagThresholds, prepare_image

SIZE = 448
TAGS = 10_861
NPU_ESTIMATE_MS = 24.0
CHARACTERS = 2_600  # of the 10,861 (the v3 lists hold a few thousand characters; the split is assumed)


def tag_list() -> TagList:
    categories = [RATING] * 4 + [GENERAL] * (TAGS - 4 - CHARACTERS) + [CHARACTER] * CHARACTERS
    return TagList(tuple(f"tag_{index}" for index in range(TAGS)), np.array(categories))


def main() -> None:
    args = arguments(__doc__, rounds=30)
    inputs = {
        "1024x768 JPEG": camera_like((1024, 768), "JPEG"),
        "512x512 PNG (SD)": camera_like((512, 512), "PNG"),
    }
    tags = tag_list()
    probabilities = np.random.default_rng(0).beta(0.3, 3.0, TAGS).astype(np.float32)  # most tags unlikely
    figures: dict = {"npu_estimate_ms": NPU_ESTIMATE_MS, "tags": TAGS}
    rows = []
    for name, data in inputs.items():
        decode, prepare = [], []
        for _ in range(args.rounds):
            started = time.process_time()
            image = open_image_bytes(data, ImagePolicy())
            decoded = time.process_time()
            prepare_image(image, SIZE)
            decode.append(decoded - started)
            prepare.append(time.process_time() - decoded)
        figures[name] = {"decode_ms": median_ms(decode), "prepare_ms": median_ms(prepare)}
        rows += [(f"{name}: decode", f"{median_ms(decode):.2f}"), (f"{name}: prepare", f"{median_ms(prepare):.2f}")]
    answer = []
    for _ in range(args.rounds):
        started = time.process_time()
        result = tags.answer(probabilities, TagThresholds())
        answer.append(time.process_time() - started)
    figures["answer_ms"] = median_ms(answer)
    figures["tags_found"] = len(result.general) + len(result.character)
    rows.append((f"answer from {TAGS:,} probabilities ({figures['tags_found']} tags kept)", f"{median_ms(answer):.2f}"))
    cpu = max(figures[name]["decode_ms"] + figures[name]["prepare_ms"] for name in inputs) + figures["answer_ms"]
    rows.append((f"NPU, estimated (ViT-B/16 at {SIZE})", f"{NPU_ESTIMATE_MS:g}"))
    figures["cpu_ms_worst"] = round(cpu, 2)
    emit(
        figures,
        args.json,
        f"WD tagger, CPU side per image (core-ms, medians of {args.rounds}) beside the NPU's",
        ("step", "ms"),
        rows,
        f"CPU per image at most {cpu:.1f} core-ms against an estimated {NPU_ESTIMATE_MS:g} ms on the NPU: "
        f"{'the NPU' if cpu < NPU_ESTIMATE_MS else 'the CPU'} bounds a device",
    )


if __name__ == "__main__":
    main()
