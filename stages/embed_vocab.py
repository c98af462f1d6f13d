"""embed-vocab: every vocabulary label encoded once into L2-normalized float16 tables.

At request time only the image is encoded; ranking is a matrix-vector product against these tables.
Labels are encoded in batches by the controller-only batched text model, each batch cut after its last
end-of-text token (about 10x less work than the full 77-token context for short labels).
Embeddings of the last good run are reused for every prompt whose text and text model are unchanged,
so editing one category of a 100,000-label vocabulary encodes only what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from common.contract import JsonFile
from common.errors import ModelFilesError
from common.hashing import sha256_text
from labels.vocabulary import Category, load_vocabulary, merge_token_identical, vocabulary_files
from modeling.rank_model import RankModelBuilder
from pipeline.config import ConfigPath, Strict
from pipeline.errors import StageError
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import console
from runtime import model_io
from runtime.backends import OnnxRuntimeBackend
from runtime.label_tables import (
    RANK_SUFFIX,
    CategoryEntry,
    LabelChanges,
    RankModel,
    TableModel,
    VocabIndex,
    normalized_rows,
    write_category_chunks,
)
from runtime.similarity import cosine
from runtime.tokenizer import TextTokenizer
from stages.shipped import SHIPPED

if TYPE_CHECKING:
    from stages.config import PipelineConfig

log = logging.getLogger(__name__)

BATCH = 64
MIN_AGREEMENT = 0.99999
TOKENIZE_CHUNK = 16_384  # prompts tokenized and sorted by length at a time (batches stay length-sorted)
TABLE_CHUNK = 65_536  # rows of a table gathered, normalized and written at a time


@dataclass(frozen=True)
class LabelReport(JsonFile, file="embed-vocab.json", made_by="invoke embed-vocab"):
    """reports/embed-vocab.json: per category, what happened to its labels on the way to the table."""

    categories: dict[str, LabelChanges]


class EmbedVocabParams(Strict):
    vocabulary: ConfigPath = SHIPPED / "vocab/default.yaml"


class EmbedVocabStage(Stage):
    name = "embed-vocab"
    help = "Encode every vocabulary label once into normalized fp16 tables for the interrogator."
    tools = ("onnx", "onnxruntime", "tokenizers", "numpy")
    settings = EmbedVocabParams
    after = ("export",)
    outputs = (VocabIndex.FILE,)

    def params(self, config: PipelineConfig) -> EmbedVocabParams:
        return config.stages.embed_vocab

    def external_inputs(self, params: EmbedVocabParams) -> list[Path]:
        return vocabulary_files(params.vocabulary)

    def run(self, ctx: StageContext[EmbedVocabParams]) -> StageResult:
        spec, read = load_vocabulary(ctx.params.vocabulary)
        export = ctx.upstream("export")
        info = model_io.ExportInfo.read(export)
        model_sha = info.text.sha256
        tokenizer = TextTokenizer.of_export(export, info)
        categories = [merge_token_identical(c, tokenizer.encode_batch) for c in read]
        _warn_about_changed_labels(categories)
        cache = _previous_embeddings(ctx.upstream(self.name), model_sha)
        missing = list(
            dict.fromkeys(c.prompt(label) for c in categories for label in c.labels if c.prompt(label) not in cache)
        )
        if missing:
            cache.update(encode_prompts(missing, export, info))
        dim = info.projection_dim
        entries = []
        for category in categories:  # each table streamed to its file and into its rank model: no whole copy
            shape = (len(category.labels), dim)
            ranks = RankModelBuilder(len(category.labels), dim)
            file = write_category_chunks(ctx.out_dir, category.spec.name, shape, _rows(category, cache), ranks.add)
            rank_file = f"{category.spec.name}{RANK_SUFFIX}"
            rank = RankModel(rank_file, **ranks.write(ctx.out_dir / rank_file))
            entries.append(_index_entry(category, file, rank))
        VocabIndex(spec.name, info.projection_dim, tuple(entries), model_sha, TableModel.of(info)).write(ctx.out_dir)
        LabelReport({c.spec.name: c.stats.changes() for c in categories}).write_to(ctx.report_file)
        total = sum(len(c.labels) for c in categories)
        merged = sum(len(c.stats.token_merges) for c in categories)
        truncated = sum(len(c.stats.truncated) for c in categories)
        changed = f", {merged} merged, {truncated} truncated" if merged or truncated else ""
        return StageResult(
            summary=f"{total} labels in {len(categories)} categories ({len(missing)} encoded, "
            f"{total - len(missing)} reused{changed})",
            figures={"labels": total, "encoded": len(missing), "merged": merged, "truncated": truncated},
        )


def _index_entry(category: Category, file: str, rank: RankModel) -> CategoryEntry:
    spec = category.spec
    return CategoryEntry(
        name=spec.name,
        mode=spec.mode,
        file=file,
        labels=category.labels,
        threshold=spec.threshold,
        min_probability=spec.min_probability,
        k=spec.k,
        template=spec.template,
        prefix=spec.prefix,
        tags=spec.tags,
        caption=spec.caption,
        labels_sha256=sha256_text("\n".join(category.labels)),
        stats=category.stats.changes(),
        rank=rank,
    )


def _warn_about_changed_labels(categories: list[Category]) -> None:
    for category in categories:
        problems = category.stats.problems()
        if problems:
            log.warning("embed-vocab: %s: %s", category.spec.name, "; ".join(problems))


def _rows(category: Category, cache: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    """The category's embeddings in order, TABLE_CHUNK rows at a time."""
    for start in range(0, len(category.labels), TABLE_CHUNK):
        yield np.stack([cache[category.prompt(label)] for label in category.labels[start : start + TABLE_CHUNK]])


def _previous_embeddings(previous: Path, model_sha: str) -> dict[str, np.ndarray]:
    """prompt -> embedding from the last good tables, when they came from the same text model: rows of
    the tables mapped from disk, not read into memory."""
    if not (previous / VocabIndex.FILE).is_file():
        return {}
    try:
        index = VocabIndex.read(previous)
    except ModelFilesError:  # from an older release: encode everything again
        return {}
    if index.text_model_sha256 != model_sha:
        return {}
    cache = {}
    for entry in index.categories:
        vectors = np.asarray(np.load(previous / entry.file, mmap_mode="r"))
        for label, vector in zip(entry.labels, vectors, strict=True):
            cache[entry.prompt(label)] = vector
    return cache


def encode_prompts(prompts: list[str], export: Path, info: model_io.ExportInfo) -> dict[str, np.ndarray]:
    """Every prompt's embedding from the batched text model, as the normalized float16 rows the tables
    store. Where attention is causal (CLIP), prompts are sorted by token count, batched, and cut after
    each batch's last EOS (the same numbers as the full context; see model_io); other families see their
    full context, as the device's model does. TOKENIZE_CHUNK prompts are tokenized and sorted at a time,
    so memory holds their ids and the float16 rows, whatever the vocabulary. Checked against the
    fixed-shape model the device runs on the first prompt."""
    import onnxruntime as ort

    tokenizer = TextTokenizer.of_export(export, info)
    session = ort.InferenceSession(str(export / model_io.TEXT_BATCH_MODEL_FILE), providers=["CPUExecutionProvider"])
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    rows = np.empty((len(prompts), info.projection_dim), dtype=np.float16)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embed-vocab", total=len(prompts))
        for first in range(0, len(prompts), TOKENIZE_CHUNK):
            ids, _ = tokenizer.encode_batch(prompts[first : first + TOKENIZE_CHUNK])
            vectors = _encode_sorted(session, ids, info)
            if first == 0:
                _check_against_fixed_model(vectors[0], ids[:1], export / model_io.TEXT_MODEL_FILE)
            rows[first : first + len(ids)] = normalized_rows(vectors)
            bar.advance(task, len(ids))
    return dict(zip(prompts, rows, strict=True))


def _encode_sorted(session: Any, ids: np.ndarray, info: model_io.ExportInfo) -> np.ndarray:
    """[len(ids), dim] float32 embeddings, BATCH prompts of similar token counts at a time."""
    if info.facts.text.cuttable:
        lengths = (ids == info.facts.text.eos_id).argmax(axis=1) + 1  # through the first EOS
    else:
        lengths = np.full(len(ids), info.context_length)
    order = np.argsort(lengths, kind="stable")
    vectors = np.empty((len(ids), info.projection_dim), dtype=np.float32)
    for start in range(0, len(order), BATCH):
        batch = order[start : start + BATCH]
        vectors[batch] = session.run(None, {model_io.TEXT_INPUT: ids[batch, : int(lengths[batch].max())]})[0]
    return vectors


def _check_against_fixed_model(vector: np.ndarray, ids: np.ndarray, model: Path) -> None:
    reference = OnnxRuntimeBackend(model).run({model_io.TEXT_INPUT: ids})[model_io.TEXT_OUTPUT][0]
    agreement = cosine(vector, reference)
    if agreement < MIN_AGREEMENT:
        raise StageError(
            "embed-vocab",
            f"the batched text model disagrees with {model.name} (cosine {agreement:.6f} < {MIN_AGREEMENT})",
            hint="run `invoke export --force` to export both again",
        )
