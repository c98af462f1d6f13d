"""embed-vocab: every vocabulary label encoded once into L2-normalized float16 tables.

At request time only the image is encoded; ranking is a matrix-vector product against these tables.
Embeddings of the last good run are reused for every prompt whose text and text model are unchanged,
so editing one category of a 100,000-label vocabulary encodes only what changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from modeling.rank_model import write_rank_model
from pipeline.config import PipelineConfig
from pipeline.files import sha256_file, sha256_text, write_json
from pipeline.report import console
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.vocabulary import Category, load_vocabulary, vocabulary_files
from runtime import model_io
from runtime.backends import OnnxRuntimeBackend
from runtime.label_tables import INDEX_FILE, RANK_MODEL_FILE, write_category
from runtime.tokenizer import ClipTokenizer


class EmbedVocabStage(Stage):
    name = "embed-vocab"
    help = "Encode every vocabulary label once into normalized fp16 tables for the interrogator."
    after = ("export",)
    outputs = (INDEX_FILE,)
    code_modules = ("pipeline.vocabulary", "runtime.label_tables", "runtime.tokenizer", "modeling.rank_model")

    def params(self, config: PipelineConfig) -> dict[str, Any]:
        return config.stages.embed_vocab.model_dump(mode="json")

    def external_inputs(self, config: PipelineConfig) -> list[Path]:
        return vocabulary_files(config.stages.embed_vocab.vocabulary)

    def run(self, ctx: StageContext) -> StageResult:
        spec, categories = load_vocabulary(ctx.config.stages.embed_vocab.vocabulary)
        export = ctx.upstream("export")
        text_model = export / model_io.TEXT_MODEL_FILE
        model_sha = sha256_file(text_model)
        info = json.loads((export / model_io.EXPORT_INFO_FILE).read_text(encoding="utf-8"))
        cache = _previous_embeddings(ctx.config.artifacts / self.name, model_sha)
        missing = list(
            dict.fromkeys(c.prompt(label) for c in categories for label in c.labels if c.prompt(label) not in cache)
        )
        if missing:
            cache.update(_encode(missing, text_model, export / model_io.TOKENIZER_FILE, info["context_length"]))
        index_categories, stored = [], []
        for category in categories:
            vectors = np.stack([cache[category.prompt(label)] for label in category.labels])
            file, rows = write_category(ctx.out_dir, category.spec.name, vectors)
            stored.append(rows)
            index_categories.append(_index_entry(category, file))
        rank = write_rank_model(ctx.out_dir / RANK_MODEL_FILE, np.concatenate(stored))
        write_json(
            ctx.out_dir / INDEX_FILE,
            {
                "name": spec.name,
                "dim": int(info["projection_dim"]),
                "text_model_sha256": model_sha,
                "categories": index_categories,
                "rank": {"file": RANK_MODEL_FILE, **rank},
            },
        )
        total = sum(len(c.labels) for c in categories)
        return StageResult(
            summary=f"{total} labels in {len(categories)} categories ({len(missing)} encoded, "
            f"{total - len(missing)} reused)",
            figures={"labels": total, "encoded": len(missing)},
        )


def _index_entry(category: Category, file: str) -> dict[str, Any]:
    spec = category.spec
    return {
        "name": spec.name,
        "mode": spec.mode,
        "template": spec.template,
        "prefix": spec.prefix,
        "threshold": spec.threshold,
        "k": spec.k,
        "tags": spec.tags,
        "file": file,
        "labels": list(category.labels),
        "labels_sha256": sha256_text("\n".join(category.labels)),
    }


def _previous_embeddings(previous: Path, model_sha: str) -> dict[str, np.ndarray]:
    """prompt -> embedding from the last good tables, when they came from the same text model."""
    index_path = previous / INDEX_FILE
    if not index_path.is_file():
        return {}
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("text_model_sha256") != model_sha:
        return {}
    cache = {}
    for entry in index["categories"]:
        vectors = np.load(previous / entry["file"]).astype(np.float32)
        for label, vector in zip(entry["labels"], vectors, strict=True):
            cache[entry["template"].replace("{}", label)] = vector
    return cache


def _encode(prompts: list[str], model: Path, tokenizer_file: Path, context_length: int) -> dict[str, np.ndarray]:
    backend = OnnxRuntimeBackend(model)
    tokenizer = ClipTokenizer(tokenizer_file, context_length)
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    out = {}
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embed-vocab", total=len(prompts))
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            out[prompt] = backend.run({model_io.TEXT_INPUT: ids})[model_io.TEXT_OUTPUT][0].astype(np.float32)
            bar.advance(task)
    return out
