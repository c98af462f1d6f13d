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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.answers import InterrogationAnswer
from runtime.classify import Classifier, Question, QuestionRefused
from runtime.errors import InvalidImage
from runtime.interrogator import CaptionOptions, Interrogator
from runtime.label_tables import normalize
from runtime.preprocess import find_images
from runtime.prompt_modes import PromptBuilder, PromptMode

JSONL_NAME = "captions.jsonl"
CLASSIFY_JSONL = "classify.jsonl"
CLASSIFY_CSV = "classify.csv"
AHEAD = 2  # prepared images waiting per decode worker


@dataclass
class CaptionSummary:
    captioned: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class CaptionInterrupted(KeyboardInterrupt):
    """Ctrl+C during a run, carrying what was written before it: each caption file is whole (written in one
    go after its image was answered), so a rerun resumes where this one stopped."""

    def __init__(self, summary: CaptionSummary) -> None:
        super().__init__()
        self.summary = summary


def caption_path(image: Path, images_dir: Path, out_dir: Path | None, shared_stem: bool = False) -> Path:
    """`a.txt` for `a.jpg`, beside it or at the same place below `out_dir`; `a.jpg.txt` when another image
    of the folder has the same name but for its extension (`a.png`), so neither caption replaces the other."""
    name = f"{image.name}.txt" if shared_stem else f"{image.stem}.txt"
    folder = image.parent if out_dir is None else (out_dir / image.relative_to(images_dir)).parent
    return folder / name


def shared_stems(images: list[Path]) -> set[Path]:
    """The images whose folder holds another image of the same name but for the extension (compared
    without case: on a Mac's file system `A.txt` and `a.txt` are one file)."""
    seen: dict[tuple[Path, str], list[Path]] = {}
    for image in images:
        seen.setdefault((image.parent, image.stem.lower()), []).append(image)
    return {image for group in seen.values() if len(group) > 1 for image in group}


@dataclass(frozen=True)
class CaptionTask:
    """What a caption is made of, the same here and on a fleet's worker."""

    options: CaptionOptions | None = None
    prompts: tuple[PromptBuilder, PromptMode] | None = None
    classify: tuple[Classifier, Question] | None = None

    def answer(self, interrogator: Interrogator, pixels: np.ndarray) -> tuple[str | None, dict[str, object]]:
        """The caption text and its JSONL record (A1111's answer, or the prompt in its mode); for a question,
        no text and the answer."""
        if self.classify:
            classifier, question = self.classify
            embedding, _ = interrogator.embed(pixels)
            answer = classifier.classify(normalize(embedding), question)
            return None, {"question": question.digest(), **answer.model_dump()}
        if self.prompts:
            builder, mode = self.prompts
            made = builder.prompt(interrogator.score(pixels)[0], mode)
            return made.prompt, {"mode": mode.value, "prompt": made.prompt, "text_encodes": made.text_encodes}
        result = interrogator.interrogate(pixels, self.options)
        return result.caption, InterrogationAnswer.of(result).model_dump()


# An image that cannot be captioned: reported and skipped, never the end of the run.
UNREADABLE = (InvalidImage, OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


class CaptionWriter:
    """Each image's .txt and its captions.jsonl line, written as they come; which images are still to do.
    For a question: each image's classify.jsonl line (`answered`: the images it already holds)."""

    def __init__(self, images_dir: Path, out_dir: Path | None, log: TextIO, answered: set[str] | None = None) -> None:
        self.images_dir, self.out_dir, self.log, self.answered = images_dir, out_dir, log, answered
        self.summary = CaptionSummary()

    @staticmethod
    @contextmanager
    def open(
        images_dir: Path, out_dir: Path | None, question: Question | None = None, overwrite: bool = False
    ) -> Iterator[CaptionWriter]:
        folder = out_dir or images_dir
        folder.mkdir(parents=True, exist_ok=True)
        jsonl, answered = folder / JSONL_NAME, None
        if question is not None:
            jsonl = folder / CLASSIFY_JSONL
            answered = set() if overwrite else answered_files(jsonl, question)
        with jsonl.open("w" if question is not None and overwrite else "a", encoding="utf-8") as log:
            writer = CaptionWriter(images_dir, out_dir, log, answered)
            try:
                yield writer
            except KeyboardInterrupt:  # Ctrl+C: the run's summary goes with it, for the command's last line
                raise CaptionInterrupted(writer.summary) from None
            finally:
                if question is not None:
                    log.flush()
                    write_table(jsonl, folder / CLASSIFY_CSV, question)

    def todo(self, overwrite: bool, on_image: Callable[[Path], None]) -> list[tuple[Path, Path]]:
        """(image, its .txt) for every image without a caption (all with `overwrite`); the rest are counted
        as skipped."""
        todo = []
        images = find_images(self.images_dir)
        shared = shared_stems(images)
        for image_path in images:
            target = caption_path(image_path, self.images_dir, self.out_dir, image_path in shared)
            if self.answered is not None:
                done = self._relative(image_path) in self.answered
            else:
                done = target.exists() and target.stat().st_size > 0 and not overwrite
            if done:
                self.summary.skipped += 1
                on_image(image_path)
            else:
                todo.append((image_path, target))
        return todo

    def write(self, image_path: Path, target: Path, text: str | None, record: dict[str, object]) -> None:
        if text is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
        self.log.write(json.dumps({"file": self._relative(image_path), **record}) + "\n")
        self.log.flush()
        self.summary.captioned += 1

    def failed(self, image_path: Path, reason: str) -> None:
        self.summary.failed.append((str(image_path), reason))

    def _relative(self, image_path: Path) -> str:
        return image_path.relative_to(self.images_dir).as_posix()


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
    images_dir: Path,
    out_dir: Path | None = None,
    *,
    options: CaptionOptions | None = None,
    overwrite: bool = False,
    on_image: Callable[[Path], None] = lambda _: None,
    workers: int | None = None,
    prompts: tuple[PromptBuilder, PromptMode] | None = None,
    classify: tuple[Classifier, Question] | None = None,
) -> CaptionSummary:
    """A caption per image (A1111's `clip` caption), with `prompts` clip-interrogator's prompt in a mode, or
    with `classify` the answer to a question."""
    if prompts:
        prompts[0].require(prompts[1])  # before the first image: a vocabulary without the lists says so
    if classify:
        classify[0].check(classify[1])  # and a question over the bounds
    task = CaptionTask(options, prompts, classify)
    workers = workers or os.cpu_count() or 2
    question = classify[1] if classify else None
    with (
        CaptionWriter.open(images_dir, out_dir, question, overwrite) as writer,
        ThreadPoolExecutor(workers, "caption-decode") as pool,
    ):
        _caption_all(interrogator, writer, pool, task, overwrite, on_image, workers)
    return writer.summary


def _caption_all(
    interrogator: Interrogator,
    writer: CaptionWriter,
    pool: ThreadPoolExecutor,
    task: CaptionTask,
    overwrite: bool,
    on_image: Callable[[Path], None],
    workers: int,
) -> None:
    """Decodes run ahead in the pool while the encoder answers the oldest; results written in order."""
    prepared: deque[tuple[Path, Path, Future[np.ndarray]]] = deque()

    def finish_oldest() -> None:
        image_path, target, pixels = prepared.popleft()
        try:
            writer.write(image_path, target, *task.answer(interrogator, pixels.result()))
        except UNREADABLE as exc:
            writer.failed(image_path, str(exc) or type(exc).__name__)
        on_image(image_path)

    for image_path, target in writer.todo(overwrite, on_image):
        prepared.append((image_path, target, pool.submit(_pixels, interrogator, image_path)))
        if len(prepared) > AHEAD * workers:
            finish_oldest()
    while prepared:
        finish_oldest()


def _pixels(interrogator: Interrogator, image_path: Path) -> np.ndarray:
    return interrogator.clip.preprocess(interrogator.clip.open(image_path))
