"""What clip-interrogator's lists in the default vocabulary cost A1111's caption: the ranking of one image
(coarse int8 pass, exact rescoring, the caption's picks) against the default vocabulary's caption and tag
categories alone, and with clip-interrogator's 111,000 labels beside them (ViT-B/32 width, random rows).
A coarse model per category runs only for what a request reads, so the caption should cost the same
either way; clip-interrogator's `analyze` reads every list.

    python bench/coarse_rank.py [--rounds 30] [--json]
"""

from __future__ import annotations

import time

import numpy as np
from harness import arguments, emit, full_size_export, median_ms, write_random_tables
from prompt_modes import CATEGORIES

from runtime.interrogator import CaptionOptions, Scores, caption
from runtime.label_tables import CategoryMode, LabelTables
from runtime.prompt_modes import ANALYZE_TOP, ANALYZED, top_picks

CAPTION = {  # the default vocabulary's caption and tag categories, by size
    "medium": (CategoryMode.ONE, 104),
    "subject": (CategoryMode.ONE, 702),
    "setting": (CategoryMode.ONE, 167),
    "style": (CategoryMode.ONE, 194),
    "lighting": (CategoryMode.ONE, 77),
    "flavors": (CategoryMode.TOP, 581),
    "tags": (CategoryMode.MANY, 197),
}
CLIP_INTERROGATOR = {  # its lists as vocab/default.yaml builds them (the caption's subject and medium aside)
    name: CATEGORIES[name] for name in ("artist", "trending", "movement", "flavor", "negative")
}


def analyze(scores: Scores) -> list:
    """clip-interrogator's analyze: the best labels of each of its lists (every list read)."""
    by_name = {c.name: c for c in scores.tables.categories}
    return [top_picks(scores, [by_name[name]], ANALYZE_TOP) for name in ANALYZED]


def main() -> None:
    args = arguments(__doc__, rounds=30)
    export = full_size_export()
    rng = np.random.default_rng(0)
    vectors = [v / np.linalg.norm(v) for v in rng.standard_normal((args.rounds, 512)).astype(np.float32)]
    rows, figures = [], {}
    only_the_caption = CaptionOptions(every_category=False)
    for name, categories in (
        ("caption categories", CAPTION),
        ("+ clip-interrogator", {**CAPTION, **CLIP_INTERROGATOR}),
    ):
        lists = frozenset(CLIP_INTERROGATOR)  # caption: false, as in vocab/default.yaml
        tables = LabelTables.load(write_random_tables(export, name.replace(" ", "-"), categories, lists))
        work = {
            "A1111 caption": lambda v, t=tables: caption(Scores(t, v), only_the_caption),
            "every category (detailed)": lambda v, t=tables: caption(Scores(t, v)),
        }
        if name != "caption categories":
            work["clip-interrogator analyze"] = lambda v, t=tables: analyze(Scores(t, v))
        for task, run in work.items():
            run(vectors[0])  # warm
            samples = []
            for vector in vectors:
                started = time.perf_counter()
                run(vector)
                samples.append(time.perf_counter() - started)
            figures[f"{name}: {task}"] = median_ms(samples)
            rows.append((name, sum(c for _, c in categories.values()), task, median_ms(samples)))
    emit(figures, args.json, "ranking one image (ViT-B/32 width)", ("vocabulary", "labels", "work", "median ms"), rows)


if __name__ == "__main__":
    main()
