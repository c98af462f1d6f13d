"""Vocabulary embedding: labels/s that embed-vocab encodes with the float text model (ViT-B/32 shapes,
random weights, onnxruntime on the CPU), ours (the batched export, prompts sorted by token count and cut
after each batch's last end-of-text token) vs one prompt at a time through the fixed [1, 77] model.

The prompts are the default vocabulary's, with their templates (a sample of --labels of them).

    python bench/embed_vocab.py [--labels 1000] [--json]
"""

from __future__ import annotations

import random
import time

from harness import REPO, arguments, emit, full_size_export

from labels.vocabulary import load_vocabulary
from runtime import model_io
from runtime.backends import OnnxRuntimeBackend
from runtime.similarity import cosine
from runtime.tokenizer import TextTokenizer
from stages.embed_vocab import encode_prompts


def main() -> None:
    args = arguments(__doc__, labels=1000)

    export = full_size_export()
    info = model_io.ExportInfo.read(export)
    _, categories = load_vocabulary(REPO / "vocab/default.yaml")
    prompts = sorted({c.prompt(label) for c in categories for label in c.labels})
    prompts = random.Random(0).sample(prompts, min(args.labels, len(prompts)))

    started = time.perf_counter()
    ours = encode_prompts(prompts, export, info)
    ours_s = time.perf_counter() - started

    fixed = OnnxRuntimeBackend(export / model_io.TEXT_MODEL_FILE)
    tokenizer = TextTokenizer.of_export(export, info)
    one_by_one = prompts[: max(1, len(prompts) // 5)]  # a fifth is enough for a rate
    started = time.perf_counter()
    reference = {p: fixed.run({model_io.TEXT_INPUT: tokenizer.encode(p)})[model_io.TEXT_OUTPUT][0] for p in one_by_one}
    single_s = time.perf_counter() - started

    worst = min(cosine(ours[p], reference[p]) for p in one_by_one)
    figures = {
        "labels": len(prompts),
        "ours_labels_per_s": round(len(prompts) / ours_s, 1),
        "one_at_a_time_labels_per_s": round(len(one_by_one) / single_s, 1),
        "speedup": round((len(prompts) / ours_s) / (len(one_by_one) / single_s), 2),
        "min_cosine_vs_fixed_model": worst,
        "hours_for_100k_labels": round(100_000 / (len(prompts) / ours_s) / 3600, 2),
    }
    assert worst > 0.99999, worst
    emit(
        figures,
        args.json,
        f"embed-vocab, ViT-B/32 text shapes on onnxruntime CPU, {len(prompts)} default-vocabulary prompts",
        ("method", "labels/s"),
        [
            ("ours: batched, cut after the last end-of-text token", figures["ours_labels_per_s"]),
            ("one prompt at a time through the fixed [1, 77] model", figures["one_at_a_time_labels_per_s"]),
        ],
        f"speedup {figures['speedup']}x, same embeddings (min cosine {worst:.7f}); "
        f"100k labels take {figures['hours_for_100k_labels']} h",
    )


if __name__ == "__main__":
    main()
