"""Batch captioning for training sets: a .txt beside each image (or in an output dir) and a JSONL; or, for
a question (`invoke classify`), each image's answer in classify.jsonl and the dataset's table in classify.csv.

Resumable: an image whose caption file exists (or whose answer to the same question is in classify.jsonl)
is skipped. Two images named alike but for the extension
(`a.jpg`, `a.png`) get `a.jpg.txt` and `a.png.txt`. An unreadable file is reported and skipped, never
fatal. Works on the device or on the controller, with whatever backend the models need.

Images are decoded and preprocessed by a pool of threads (Pillow and numpy release the GIL) while the
one encoder runs; at most AHEAD images per worker wait prepared, so memory stays bounded on any folder,
and results are written in the folder's order.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.atomic import atomic_write_text
from runtime.answers import InterrogationAnswer
from runtime.caption_style import CaptionStyle
from runtime.classify import Classifier, Question, QuestionRefused
from runtime.errors import InvalidImage
from runtime.interrogator import CaptionOptions, Interrogation, Interrogator, Scores, caption_categories
from runtime.label_format import Existing
from runtime.preprocess import find_images
from runtime.prompt_modes import PromptBuilder, PromptMode

JSONL_NAME = "captions.jsonl"
CLASSIFY_JSONL = "classify.jsonl"
CLASSIFY_CSV = "classify.csv"
TAGS_CSV = "tags.csv"  # beside captions.jsonl: how many images' captions hold each label
AHEAD = 2  # prepared images waiting per decode worker


@dataclass
class CaptionSummary:
    captioned: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    previews: list[tuple[str, str]] = field(default_factory=list)  # a dry run's (image, caption)


class CaptionInterrupted(KeyboardInterrupt):
    """Ctrl+C during a run, carrying what was written before it: each caption file is whole (written in one
    go after its image was answered), so a rerun resumes where this one stopped."""

    def __init__(self, summary: CaptionSummary) -> None:
        super().__init__()
        self.summary = summary


def caption_path(
    image: Path, images_dir: Path, out_dir: Path | None, shared_stem: bool = False, extension: str = ".txt"
) -> Path:
    """`a.txt` for `a.jpg`, beside it or at the same place below `out_dir`; `a.jpg.txt` when another image
    of the folder has the same name but for its extension (`a.png`), so neither caption replaces the other."""
    name = f"{image.name}{extension}" if shared_stem else f"{image.stem}{extension}"
    folder = image.parent if out_dir is None else (out_dir / image.relative_to(images_dir)).parent
    return folder / name


def shared_stems(images: list[Path]) -> set[Path]:
    """The images whose folder holds another image of the same name but for the extension (compared
    without case: on a Mac's file system `A.txt` and `a.txt` are one file)."""
    seen: dict[tuple[Path, str], list[Path]] = {}
    for image in images:
        seen.setdefault((image.parent, image.stem.lower()), []).append(image)
    return {image for group in seen.values() if len(group) > 1 for image in group}


Answer = tuple[str | None, dict[str, object]]  # the caption text (None for a question) and its record
Encoded = tuple[np.ndarray, dict[str, float]]  # an image's embedding and its timings (Interrogator.embed)


class ImageTask(Protocol):
    """An image's way through answer_all: prepared on the CPU, run on the NPU (one at a time), finished on
    the CPU. CaptionTask (CLIP) and runtime.tag_captions.TagTask (a WD tagger) are the two."""

    def prepare(self, source: Path | bytes) -> np.ndarray: ...

    def encode(self, pixels: np.ndarray) -> Any: ...

    def finish_all(self, encoded: list[Any]) -> list[Answer | Exception]: ...


@dataclass(frozen=True)
class CaptionTask:
    """What a caption is made of, the same here and on a fleet's worker."""

    interrogator: Interrogator
    options: CaptionOptions | None = None
    prompts: tuple[PromptBuilder, PromptMode] | None = None
    classify: tuple[Classifier, Question] | None = None

    def prepare(self, source: Path | bytes) -> np.ndarray:
        return self.interrogator.clip.preprocess(self.interrogator.clip.open(source))

    def encode(self, pixels: np.ndarray) -> Encoded:
        return self.interrogator.embed(pixels)

    def finish_all(self, encoded: list[Encoded | Exception]) -> list[Answer | Exception]:
        """Each encoded image's answer (an image that failed keeps its exception), after the encodes (the
        step on the NPU): the caption's categories are ranked for the images at once (a prompt mode or a
        question reads its own, taking the NPU lock itself for its text encodes)."""
        interrogator = self.interrogator
        images = [item for item in encoded if not isinstance(item, Exception)]
        started = time.perf_counter()
        ranked = [] if self.prompts or self.classify else caption_categories(interrogator.tables, self.caption)
        batch = iter(Scores.batch(interrogator.tables, [embedding for embedding, _ in images], ranked))
        rank_ms = (time.perf_counter() - started) * 1e3 / max(len(images), 1)  # the batch's pass, shared
        answers: list[Answer | Exception] = []
        for item in encoded:
            if isinstance(item, Exception):
                answers.append(item)
                continue
            try:
                answers.append(self._finish(next(batch), {**item[1], "rank": rank_ms}))
            except UNREADABLE as exc:
                answers.append(exc)
        return answers

    @property
    def caption(self) -> CaptionOptions:
        return self.options or CaptionOptions()

    def _finish(self, scores: Scores, timings: dict[str, float]) -> Answer:
        """The caption text and its JSONL record (A1111's answer, or the prompt in its mode); for a question,
        no text and the answer."""
        if self.classify:
            classifier, question = self.classify
            answer = classifier.classify(scores.vector, question)
            return None, {"question": question.digest(), **answer.model_dump()}
        if self.prompts:
            builder, mode = self.prompts
            made = builder.prompt(scores, mode)
            return made.prompt, {"mode": mode.value, "prompt": made.prompt, "text_encodes": made.text_encodes}
        started = time.perf_counter()
        caption, results = self.interrogator.caption(scores, self.caption)
        timings = {**timings, "rank": timings["rank"] + (time.perf_counter() - started) * 1e3}
        return caption, InterrogationAnswer.of(Interrogation(caption, results, timings)).model_dump()


@dataclass(frozen=True)
class CaptionRun:
    """A run over a folder as the writer sees it: where the answers go and how files are written."""

    images_dir: Path
    out_dir: Path | None = None
    style: CaptionStyle = field(default_factory=CaptionStyle)
    question: Question | None = None  # `invoke classify`: classify.jsonl and classify.csv, no caption files
    overwrite: bool = False  # answer every image again (for captions: style.existing = overwrite)
    dry_run: int = 0  # caption this many images and write nothing (the answers are in the summary)

    @property
    def folder(self) -> Path:
        """Where captions.jsonl (classify.jsonl), tags.csv and the report go."""
        return self.out_dir or self.images_dir

    @property
    def existing(self) -> Existing:
        return Existing.OVERWRITE if self.overwrite else self.style.existing


# An image that cannot be captioned: reported and skipped, never the end of the run.
UNREADABLE = (InvalidImage, OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


class CaptionWriter:
    """Each image's caption file and its captions.jsonl line, written as they come; which images are still
    to do. For a question: each image's classify.jsonl line (`answered`: the images it already holds). In a
    dry run: nothing written, the captions kept in the summary."""

    def __init__(self, run: CaptionRun, log: TextIO | None, answered: set[str] | None = None) -> None:
        self.run, self.log, self.answered = run, log, answered
        self.images_dir, self.out_dir = run.images_dir, run.out_dir
        self.format = run.style.options().format
        self.summary = CaptionSummary()

    @staticmethod
    @contextmanager
    def open(run: CaptionRun) -> Iterator[CaptionWriter]:
        folder, question = run.folder, run.question
        if run.dry_run:
            yield CaptionWriter(run, None)
            return
        folder.mkdir(parents=True, exist_ok=True)
        jsonl, answered = folder / JSONL_NAME, None
        if question is not None:
            jsonl = folder / CLASSIFY_JSONL
            answered = set() if run.overwrite else answered_files(jsonl, question)
        with jsonl.open("w" if question is not None and run.overwrite else "a", encoding="utf-8") as log:
            writer = CaptionWriter(run, log, answered)
            try:
                yield writer
            except KeyboardInterrupt:  # Ctrl+C: the run's summary goes with it, for the command's last line
                raise CaptionInterrupted(writer.summary) from None
            finally:
                if question is not None:
                    log.flush()
                    write_table(jsonl, folder / CLASSIFY_CSV, question)

    def targets(self) -> list[tuple[Path, Path]]:
        """Every image of the folder with its caption file."""
        images = find_images(self.images_dir)
        shared = shared_stems(images)
        extension = self.run.style.extension
        return [(i, caption_path(i, self.images_dir, self.out_dir, i in shared, extension)) for i in images]

    def todo(self, on_image: Callable[[Path], None]) -> list[tuple[Path, Path]]:
        """(image, its caption file) for every image to caption; the rest (a caption there and `existing:
        skip`, or answered) are counted as skipped. A dry run takes the first `dry_run` of them."""
        todo = []
        for image_path, target in self.targets():
            if self.answered is not None:
                done = self._relative(image_path) in self.answered
            else:
                done = self.run.existing is Existing.SKIP and target.exists() and target.stat().st_size > 0
            if done:
                self.summary.skipped += 1
                on_image(image_path)
            else:
                todo.append((image_path, target))
        return todo[: self.run.dry_run] if self.run.dry_run else todo

    def write(self, image_path: Path, target: Path, text: str | None, record: dict[str, object]) -> None:
        """The caption file (merged with the one there as `existing` says; replaced whole, atomically)
        and the JSONL line."""
        if self.run.dry_run:
            self.summary.previews.append((self._relative(image_path), text or json.dumps(record)))
        else:
            if text is not None:
                merged = self.format.merge(_read_text(target), text, self.run.existing)
                atomic_write_text(target, merged + "\n", sync=False)  # a crash leaves the old caption or the new
            assert self.log is not None
            self.log.write(json.dumps({"file": self._relative(image_path), **record}) + "\n")
            self.log.flush()
        self.summary.captioned += 1

    def failed(self, image_path: Path, reason: str) -> None:
        self.summary.failed.append((str(image_path), reason))

    def _relative(self, image_path: Path) -> str:
        return image_path.relative_to(self.images_dir).as_posix()


def _read_text(path: Path) -> str:
    """A caption file's text, "" when there is none (or it cannot be read as text: it is then replaced)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def tag_counts(run: CaptionRun) -> Counter[str]:
    """How many of the set's caption files hold each label (the whole set's, this run's and earlier ones),
    compared as the formatter compares them."""
    writer = CaptionWriter(run, None)
    counts: Counter[str] = Counter()
    for _, target in writer.targets():
        counts.update(set(writer.format.labels(_read_text(target))))
    return counts


def write_tag_counts(run: CaptionRun, counts: Counter[str]) -> Path:
    """tags.csv beside captions.jsonl: every label with the number of images whose caption holds it."""
    path = run.folder / TAGS_CSV
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["tag", "images"])
        out.writerows(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return path


def _question_lines(jsonl: Path) -> Iterator[dict[str, Any]]:
    """classify.jsonl's records; a line cut short by a crash is not one."""
    if not jsonl.is_file():
        return
    with jsonl.open(encoding="utf-8") as lines:
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)


def answered_files(jsonl: Path, question: Question) -> set[str]:
    """The images classify.jsonl already answers for `question`; answers to another question there are
    refused, not mixed into one table."""
    digest, answered = question.digest(), set()
    for record in _question_lines(jsonl):
        if record.get("question") != digest:
            raise QuestionRefused(
                f"{jsonl} holds answers to another question: pass --overwrite to replace them, or --out DIR"
            )
        answered.add(str(record.get("file")))
    return answered


def write_table(jsonl: Path, table: Path, question: Question) -> None:
    """The dataset's table from classify.jsonl: a row per image (its last answer), a column per category
    holding its picks, best first."""
    rows: dict[str, dict[str, str]] = {}
    digest = question.digest()
    for record in _question_lines(jsonl):
        if record.get("question") == digest:
            picks = {c["name"]: ", ".join(p["label"] for p in c["picks"]) for c in record["categories"]}
            rows[str(record["file"])] = picks
    names = [category.name for category in question.categories]
    with table.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["image", *names])
        for file in sorted(rows):
            out.writerow([file, *(rows[file].get(name, "") for name in names)])


def caption_folder(
    interrogator: Interrogator,
    run: CaptionRun,
    *,
    on_image: Callable[[Path], None] = lambda _: None,
    workers: int | None = None,
    prompts: tuple[PromptBuilder, PromptMode] | None = None,
    classifier: Classifier | None = None,
) -> CaptionSummary:
    """A caption per image (A1111's `clip` caption in the run's style), with `prompts` clip-interrogator's
    prompt in a mode, or with a question the answer (`classifier` asks it)."""
    if prompts:
        prompts[0].require(prompts[1])  # before the first image: a vocabulary without the lists says so
    classify = (classifier, run.question) if classifier is not None and run.question is not None else None
    if classify:
        classify[0].check(classify[1])  # and a question over the bounds
    return answer_folder(CaptionTask(interrogator, run.style.options(), prompts, classify), run, on_image, workers)


def answer_folder(
    task: ImageTask, run: CaptionRun, on_image: Callable[[Path], None] = lambda _: None, workers: int | None = None
) -> CaptionSummary:
    """Every image of the run that is still to do through `task`, each answer written as the run says."""
    workers = workers or os.cpu_count() or 2

    def deliver(files: tuple[Path, Path], answer: Answer | Exception) -> None:
        image_path, target = files
        try:
            if isinstance(answer, Exception):
                raise answer
            writer.write(image_path, target, *answer)
        except UNREADABLE as exc:
            writer.failed(image_path, str(exc) or type(exc).__name__)
        on_image(image_path)

    with CaptionWriter.open(run) as writer, ThreadPoolExecutor(workers, "caption-decode") as pool:
        items = ((files, files[0]) for files in writer.todo(on_image))
        answer_all(task, items, deliver, pool, workers)
    return writer.summary


RANK_BATCH = 16  # encoded images ranked at once, at most (they wait only while the finisher is busy)
K = TypeVar("K")  # what `deliver` is told an answer is for


def answer_all(
    task: ImageTask,
    items: Iterable[tuple[K, Path | bytes]],
    deliver: Callable[[K, Answer | Exception], None],
    pool: ThreadPoolExecutor,
    workers: int,
) -> None:
    """Every item's answer handed to `deliver`, in the items' order, three steps at once: decodes run ahead
    in `pool`, this thread only encodes (the NPU's step, so the NPU never waits for the CPU's work on an
    image), and one more thread ranks, formats and delivers. The encoded images wait in a batch while that
    thread is busy and are ranked together (one read of a big category's rows for the batch), so the
    batch grows only as far as the CPU falls behind. At most AHEAD images a decode worker wait decoded."""
    decoded: deque[tuple[K, Future[np.ndarray]]] = deque()
    finished: deque[Future[None]] = deque()
    batch: list[tuple[K, Any]] = []

    def finish(encoded: list[tuple[K, Any]]) -> None:
        answers = task.finish_all([item for _, item in encoded])
        for (key, _), answer in zip(encoded, answers, strict=True):
            deliver(key, answer)

    def send(finisher: ThreadPoolExecutor) -> None:
        finished.append(finisher.submit(finish, batch.copy()))
        batch.clear()

    def encode_oldest(finisher: ThreadPoolExecutor) -> None:
        key, pixels = decoded.popleft()
        try:
            batch.append((key, task.encode(pixels.result())))
        except UNREADABLE as exc:
            batch.append((key, exc))
        if len(batch) >= RANK_BATCH or not finished or finished[-1].done():
            send(finisher)
        while finished and (finished[0].done() or len(finished) > AHEAD * workers):
            finished.popleft().result()  # waits only when the finisher falls behind; raises what it raised

    with ThreadPoolExecutor(1, "caption-finish") as finisher:
        for key, source in items:
            decoded.append((key, pool.submit(task.prepare, source)))
            if len(decoded) > AHEAD * workers:
                encode_oldest(finisher)
        while decoded:
            encode_oldest(finisher)
        if batch:
            send(finisher)
        while finished:
            finished.popleft().result()
