"""`invoke caption` and `invoke classify`: a folder of images captioned (or asked a question) here or across
the devices, in the style of pipeline.yaml's `caption:` section with the command line's flags over it;
then the set's tag counts (tags.csv) and, when asked, its HTML report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit
from pydantic import ValidationError

from commands.cli import device_models_dir, load, user_errors
from pipeline.config import describe_error
from pipeline.errors import PipelineError
from pipeline.terminal import console, print_table
from stages.config import PipelineConfig

if TYPE_CHECKING:
    from runtime.captioning import CaptionRun, CaptionSummary
    from runtime.classify import Question

TOP_TAGS = 15  # the tag counts' rows printed (tags.csv has them all)


@dataclass(frozen=True)
class CaptionFlags:
    """The command line of `invoke caption` and `invoke classify` (None and False: not given)."""

    images: str | None
    out: str | None = None
    models: str | None = None
    npu_lock: str | None = None
    mode: str | None = None
    host: str | None = None
    overwrite: bool = False
    dry_run: int = 0
    report: bool = False
    style: dict[str, Any] = field(default_factory=dict)  # CaptionStyle's fields, as the flags spell them
    tagger: str | bool | None = None  # booru tags instead of CLIP's caption: True, the set's tagger; or a folder


def caption_images(config_path: str | None, flags: CaptionFlags, question: Question | None = None) -> None:
    """Caption every image below `flags.images` with the fetched models and vocabulary tables (with `mode`,
    clip-interrogator's prompt in that mode; with `question`, its answer): here, or across the devices
    (`--host`, or whenever the devices are other machines) with Dask."""
    from runtime.prompt_modes import PromptMode

    with user_errors():
        images_dir, count = _images_dir(flags.images)
        modes = [m.value for m in PromptMode]
        if flags.mode is not None and flags.mode not in modes:
            raise PipelineError(f"--mode {flags.mode!r} is not a prompt mode", hint=f"pass one of {', '.join(modes)}")
        config = None if flags.models else load(config_path)
        run = _caption_run(config, images_dir, flags, question)
        if flags.tagger:
            _check_tagger_flags(flags)
        if flags.tagger and not (flags.tagger is True and _on_devices(config, flags)):
            with _interrupted_caption("nothing is left running"):
                summary = _tag_here(config, run, flags, count)
        elif config is not None and _on_devices(config, flags):
            if flags.npu_lock:
                raise PipelineError("--npu-lock is for captioning here; on devices set device.npu_lock")
            with _interrupted_caption("the devices' caption workers were stopped"):
                devices = config.with_devices(flags.host or "all")
                summary = _caption_on_devices(devices, run, flags.mode, count, tagger=bool(flags.tagger))
        else:
            with _interrupted_caption("nothing is left running"):
                summary = _caption_here(config, run, flags, count)
    _print_summary(summary, run)
    if flags.report and not run.dry_run and question is None:
        from commands.caption_report import write_caption_report

        console.print(f"report: {write_caption_report(run, summary)}", markup=False, soft_wrap=True)


def _on_devices(config: PipelineConfig | None, flags: CaptionFlags) -> bool:
    """Whether the images are captioned on the devices with Dask: `--host`, or devices that are other machines."""
    if config is None:
        return False
    return flags.host is not None or bool(config.devices) or config.host(config.device.host).kind != "local"


def classify_images(
    config_path: str | None, flags: CaptionFlags, labels: str | None, question_file: str | None, template: str | None
) -> None:
    """Every image below `images` against the labels, or the question file's categories: classify.jsonl and
    classify.csv, here or across the devices as `invoke caption` runs."""
    with user_errors():
        question = read_question(labels, question_file, template)
    caption_images(config_path, flags, question)


def read_question(labels: str | None, question_file: str | None, template: str | None) -> Question:
    """--labels "a,b,c" (with --template) or --question FILE.yaml (the request's `categories`), checked as the
    service checks a request."""
    import yaml

    from runtime.classify import Question

    if (labels is None) == (question_file is None):
        raise PipelineError('pass --labels "a,b,c" or --question FILE.yaml', hint="one of them, not both")
    where = "--labels" if labels is not None else question_file
    try:
        if labels is not None:
            return Question.of_labels(labels.split(","), template or "{}")
        if template:
            raise PipelineError("--template goes with --labels", hint="a question file gives each category its own")
        text = Path(str(question_file)).read_text(encoding="utf-8")
        return Question.model_validate(yaml.safe_load(text))
    except OSError as exc:
        raise PipelineError(f"--question {question_file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{question_file}: not YAML ({exc})".replace("\n", " ")) from None
    except ValidationError as exc:
        raise PipelineError(
            f"{where}: {_problems(exc)}", hint="see README: classify (categories: [{name, labels, mode}, ...])"
        ) from None


def _images_dir(images: str | None) -> tuple[Path, int]:
    """The folder, checked, and how many images it holds (the progress bar's total)."""
    from runtime.preprocess import IMAGE_SUFFIXES, find_images

    if not images:
        raise PipelineError("--images is needed: the folder of images (searched recursively)", hint="pass --images DIR")
    images_dir = Path(images)
    if not images_dir.is_dir():
        raise PipelineError(f"{images_dir} is not a directory", hint="pass --images DIR")
    count = len(find_images(images_dir))
    if not count:
        raise PipelineError(
            f"no images in {images_dir} (searched recursively for {', '.join(IMAGE_SUFFIXES)})",
            hint="pass --images with the folder that holds them",
        )
    return images_dir, count


def _caption_run(
    config: PipelineConfig | None, images_dir: Path, flags: CaptionFlags, question: Question | None
) -> CaptionRun:
    """The run: pipeline.yaml's `caption:` style with the flags over it."""
    from runtime.caption_style import CaptionStyle
    from runtime.captioning import CaptionRun

    base = config.caption if config is not None else CaptionStyle()
    try:
        style = base.with_flags(**flags.style)
    except ValidationError as exc:
        raise PipelineError(
            f"caption options: {_problems(exc)}", hint="see README: Captioning a training set"
        ) from None
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    if flags.dry_run < 0:
        raise PipelineError(f"--dry-run takes a number of images (got {flags.dry_run})")
    out = Path(flags.out) if flags.out else None
    return CaptionRun(images_dir, out, style, question, flags.overwrite, flags.dry_run)


def _problems(exc: ValidationError) -> str:
    """pydantic's errors worded as pipeline.yaml's are."""
    return "; ".join(describe_error(error) for error in exc.errors())


@contextmanager
def _interrupted_caption(cleaned: str) -> Iterator[None]:
    """Ctrl+C: exit 130 with one line saying what was written and cleaned up, and how to resume."""
    try:
        yield
    except KeyboardInterrupt as exc:
        summary = getattr(exc, "summary", None)
        written = f"{summary.captioned} captions written this run" if summary else "no caption written yet"
        raise Exit(
            f"interrupted: {written} (each caption file is whole); {cleaned}. Run the same command again to "
            "resume: images with a caption are skipped.",
            code=130,
        ) from None


def _progress_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    return ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def _caption_on_devices(
    config: PipelineConfig, run: CaptionRun, mode: str | None, count: int, tagger: bool = False
) -> CaptionSummary:
    from rich.progress import Progress

    from deploy.fleet_caption import FleetCaptionJob, FleetProgress, caption_on_fleet

    verb = "classify" if run.question else "tag" if tagger else "caption"
    with Progress(*_progress_columns(), console=console) as bar:
        task = bar.add_task(verb, total=run.dry_run or count)

        def advance(_: Path, progress: FleetProgress) -> None:
            bar.update(task, advance=1, description=f"{verb} {progress.rates()}")

        return caption_on_fleet(config, FleetCaptionJob(run, mode, tagger=tagger), advance)


def _caption_here(config: PipelineConfig | None, run: CaptionRun, flags: CaptionFlags, count: int) -> CaptionSummary:
    from rich.progress import Progress

    from runtime.captioning import caption_folder
    from runtime.classify import BATCH_LIMITS, Classifier
    from runtime.npu import NpuLock
    from runtime.opening import OpenOptions, open_interrogator
    from runtime.preprocess import Fidelity
    from runtime.prompt_modes import PromptBuilder, PromptMode

    models_dir = device_models_dir(config, flags.models)
    lock = flags.npu_lock or (config.device.npu_lock if config else None)
    fidelity = config.device.fidelity if config else Fidelity.FAST
    interrogator = open_interrogator(
        models_dir, OpenOptions(npu=NpuLock(Path(lock) if lock else None), fidelity=fidelity)
    )
    prompts = (PromptBuilder(interrogator), PromptMode(flags.mode)) if flags.mode else None
    if prompts:
        prompts[0].require(prompts[1])
    classifier = Classifier.open(interrogator, BATCH_LIMITS) if run.question else None
    with Progress(*_progress_columns(), console=console) as bar:
        task = bar.add_task("classify" if run.question else "caption", total=run.dry_run or count)
        return caption_folder(
            interrogator, run, on_image=lambda _: bar.advance(task), prompts=prompts, classifier=classifier
        )


def _check_tagger_flags(flags: CaptionFlags) -> None:
    if flags.mode:
        raise PipelineError("--mode is a CLIP prompt mode: a tagger writes booru tags; drop one of the two")
    if flags.host and flags.tagger is not True:
        raise PipelineError(
            f"--tagger {flags.tagger} is a folder on this machine: it tags here, not on --host",
            hint="`--tagger` alone tags with the tagger fetch put on the devices (`tagger:` in pipeline.yaml)",
        )


def _tag_here(config: PipelineConfig | None, run: CaptionRun, flags: CaptionFlags, count: int) -> CaptionSummary:
    """Booru tags from a WD tagger's folder (model.onnx or model.axmodel beside selected_tags.csv)."""
    from rich.progress import Progress

    from runtime.captioning import answer_folder
    from runtime.npu import NpuLock
    from runtime.tag_captions import TagTask
    from runtime.tagger import Tagger, required_tagger

    lock = flags.npu_lock or (config.device.npu_lock if config else None)
    folder = (
        Path(flags.tagger).expanduser()
        if isinstance(flags.tagger, str)
        else required_tagger(device_models_dir(config, flags.models))
    )
    tagger = Tagger(folder, NpuLock(Path(lock) if lock else None), unload_after=None)
    with Progress(*_progress_columns(), console=console) as bar:
        task = bar.add_task(f"tag ({tagger.name})", total=run.dry_run or count)
        return answer_folder(TagTask.of(tagger, run.style), run, on_image=lambda _: bar.advance(task))


def _print_summary(summary: CaptionSummary, run: CaptionRun) -> None:
    from runtime.captioning import CLASSIFY_CSV, CLASSIFY_JSONL, tag_counts, write_tag_counts

    if run.dry_run:
        for file, text in summary.previews:
            console.print(f"{file}: {text}", markup=False, soft_wrap=True)
        console.print(f"dry run: {summary.captioned} captioned, nothing written", markup=False)
        return
    done = "classified" if run.question else "captioned"
    console.print(f"{done} {summary.captioned}, already done {summary.skipped}, unreadable {len(summary.failed)}")
    for path, reason in summary.failed:
        console.print(f"  skipped {path}: {reason}", markup=False)
    if run.question:
        for name, file in (("answers", CLASSIFY_JSONL), ("table", CLASSIFY_CSV)):  # whole paths, to paste
            console.print(f"{name}: {run.folder / file}", markup=False, soft_wrap=True)
        return
    counts = tag_counts(run)
    table = write_tag_counts(run, counts)
    rows = [(tag, f"{n:,}") for tag, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TAGS]]
    print_table(f"the set's most frequent tags ({len(counts):,} in all: {table})", ("tag", "images"), rows)
