"""The engine's decisions, on two small stages that write files: what reruns, what is kept, and reasons."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from common.errors import UserError
from pipeline import files
from pipeline.errors import ConfigError, GraphError, RunLockedError, StageError, is_user_error, user_message
from pipeline.files import OWNER_MARKER
from pipeline.graph import StageGraph
from pipeline.runlock import claim_artifacts, run_lock
from pipeline.runner import Outcome, RunRequest, plan, run
from pipeline.stage import Stage, StageContext, StageResult
from stages.config import PipelineConfig, load_config
from stages.export import ExportParams


class Produce(Stage):
    """Writes a file whose content is its param (stages.export.opset)."""

    name = "produce"
    help = "toy upstream stage"
    outputs = ("value.txt",)
    tools = ("onnx",)

    def params(self, config: PipelineConfig) -> ExportParams:
        return config.stages.export

    def run(self, ctx: StageContext[ExportParams]) -> StageResult:
        (ctx.out_dir / "value.txt").write_text(str(ctx.params.opset))
        return StageResult("wrote value")


class ConsumeParams(BaseModel):
    max_images: int
    images: Path


class Consume(Stage):
    """Reads produce's output; fails when stages.verify.max_images is 13."""

    name = "consume"
    help = "toy downstream stage"
    after = ("produce",)
    outputs = ("double.txt",)

    def params(self, config: PipelineConfig) -> ConsumeParams:
        return ConsumeParams(max_images=config.stages.verify.max_images, images=config.stages.verify.images)

    def external_inputs(self, params: ConsumeParams) -> list[Path]:
        return [params.images]

    def run(self, ctx: StageContext[ConsumeParams]) -> StageResult:
        if ctx.params.max_images == 13:
            (ctx.out_dir / "double.txt").write_text("half-written")
            raise StageError(self.name, "unlucky number")
        value = int((ctx.upstream("produce") / "value.txt").read_text())
        (ctx.out_dir / "double.txt").write_text(str(2 * value * ctx.params.max_images))
        return StageResult("doubled")


GRAPH = StageGraph([Produce(), Consume()])


def _config(tmp_path: Path, opset: int = 14, max_images: int = 4) -> PipelineConfig:
    path = tmp_path / "pipeline.yaml"
    data = {
        "artifacts": "artifacts",
        "stages": {"export": {"opset": opset}, "verify": {"max_images": max_images, "images": "photos"}},
    }
    (tmp_path / "photos").mkdir(exist_ok=True)
    if not (tmp_path / "photos/a.jpg").exists():
        (tmp_path / "photos/a.jpg").write_text("pixels")
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _results(config: PipelineConfig, **request: Any) -> dict[str, Outcome]:
    return {o.stage: o.outcome for o in run(config, GRAPH, RunRequest(**request))}


def _why(config: PipelineConfig, stage: str) -> tuple[str, ...]:
    return dict((s.name, d.reasons) for s, d in plan(config, GRAPH, RunRequest()))[stage]


def test_first_run_runs_everything_and_records_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _results(config) == {"produce": Outcome.RAN, "consume": Outcome.RAN}
    lock = json.loads((config.artifacts / "pipeline.lock.json").read_text())
    record = lock["stages"]["consume"]
    assert record["params"] == {"max_images": 4, "images": str(tmp_path / "photos")}  # all it reads
    assert set(record["inputs"]) == {"produce/value.txt", str(tmp_path / "photos/a.jpg")}
    assert record["outputs"]["double.txt"]["sha256"] == files.sha256_file(config.artifacts / "consume/double.txt")
    assert record["tools"] == {} and lock["stages"]["produce"]["tools"] == {"onnx": metadata.version("onnx")}
    assert record["host"] == "local" and record["seconds"] >= 0


def test_rerun_skips_unchanged_stages(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    assert _results(config) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.UP_TO_DATE}


def test_param_change_reruns_that_stage_and_downstream_only(tmp_path: Path) -> None:
    _results(_config(tmp_path))
    changed_downstream = _config(tmp_path, max_images=5)
    assert _why(changed_downstream, "consume") == ("param max_images: 4 -> 5",)
    assert _results(changed_downstream) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.RAN}

    changed_upstream = _config(tmp_path, opset=13, max_images=5)
    assert _why(changed_upstream, "produce") == ("param opset: 14 -> 13",)
    assert _why(changed_upstream, "consume") == ("upstream produce will run first",)
    assert _results(changed_upstream) == {"produce": Outcome.RAN, "consume": Outcome.RAN}
    assert (changed_upstream.artifacts / "consume/double.txt").read_text() == str(2 * 13 * 5)


def test_deleted_output_reruns_its_stage_and_status_says_so(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    (config.artifacts / "consume/double.txt").unlink()
    assert _why(config, "consume") == ("output consume/double.txt missing",)
    assert _why(config, "produce") == ()
    assert _results(config) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.RAN}


def test_edited_output_reruns_its_stage_first(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    (config.artifacts / "produce/value.txt").write_text("99")
    assert _why(config, "produce") == ("output produce/value.txt modified since it was written",)
    assert _why(config, "consume") == ("upstream produce will run first",)
    assert _results(config) == {"produce": Outcome.RAN, "consume": Outcome.UP_TO_DATE}


def test_an_output_changed_under_its_old_size_and_mtime_reruns_its_stage_rather_than_feed_downstream(
    tmp_path: Path,
) -> None:
    """Bytes changed inside compile's output with its mtime put back passed compile's size+mtime check,
    while fetch, which had last read the file at another mtime, saw "input changed" and shipped it."""
    config = _config(tmp_path)
    _results(config)
    value = config.artifacts / "produce/value.txt"
    written = value.stat().st_mtime_ns
    os.utime(value, ns=(written + 10**9, written + 10**9))  # touched: same bytes, another mtime
    config = _config(tmp_path, max_images=5)
    assert _results(config) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.RAN}  # reads it at that mtime
    value.write_text("41")  # corrupted, same size ...
    os.utime(value, ns=(written, written))  # ... and the mtime produce recorded, restored
    assert _why(config, "produce") == ("output produce/value.txt modified since it was written",)
    assert _results(config) == {"produce": Outcome.RAN, "consume": Outcome.UP_TO_DATE}
    assert value.read_text() == "14" and (config.artifacts / "consume/double.txt").read_text() == str(2 * 14 * 5)


def test_changed_added_and_removed_inputs_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    photos = tmp_path / "photos"
    (photos / "a.jpg").write_text("other pixels")
    assert _why(config, "consume") == (f"input {photos / 'a.jpg'} changed",)
    (photos / "b.jpg").write_text("new")
    (photos / "a.jpg").unlink()
    assert _why(config, "consume") == (f"input {photos / 'a.jpg'} removed", f"input {photos / 'b.jpg'} added")


def test_failed_stage_keeps_last_good_outputs_and_is_retried(tmp_path: Path) -> None:
    _results(_config(tmp_path))
    good = (tmp_path / "artifacts/consume/double.txt").read_text()
    failing = _config(tmp_path, max_images=13)
    outcomes = run(failing, GRAPH, RunRequest())
    assert outcomes[1].outcome is Outcome.FAILED and "unlucky number" in outcomes[1].summary
    assert (failing.artifacts / "consume/double.txt").read_text() == good
    assert not (failing.artifacts / ".tmp").exists()
    assert _why(failing, "consume") == ("param max_images: 4 -> 13",)


def test_a_runtime_error_inside_a_stage_fails_it_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stages call runtime/ code (tokenizer, preprocessing); its error family fails the stage cleanly."""
    from common.errors import ModelFilesError

    def broken(self: Consume, ctx: StageContext) -> StageResult:
        raise ModelFilesError("tokenizer.json: the tokenizer has no '<|endoftext|>' token: run `invoke export` again")

    monkeypatch.setattr(Consume, "run", broken)
    outcome = run(_config(tmp_path), GRAPH, RunRequest())[1]
    assert outcome.outcome is Outcome.FAILED and "run `invoke export` again" in outcome.summary
    assert not (tmp_path / "artifacts/.tmp").exists()


def test_downstream_of_a_failure_is_skipped(tmp_path: Path) -> None:
    class Broken(Produce):
        def run(self, ctx: StageContext) -> StageResult:
            raise StageError(self.name, "boom")

    class Summarize(Consume):
        name = "summarize"
        after = ("consume",)

    outcomes = run(_config(tmp_path), StageGraph([Broken(), Consume(), Summarize()]), RunRequest())
    assert [o.outcome for o in outcomes] == [Outcome.FAILED, Outcome.SKIPPED, Outcome.SKIPPED]
    # the stage that failed, not every stage skipped on the way (consume did not fail)
    assert outcomes[1].reasons == outcomes[2].reasons == ("upstream produce failed",)


def test_force_reruns_up_to_date_stages(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    assert _results(config, force=True) == {"produce": Outcome.RAN, "consume": Outcome.RAN}


def test_dry_run_reports_and_writes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _results(config, dry_run=True) == {"produce": Outcome.WOULD_RUN, "consume": Outcome.WOULD_RUN}
    assert not (config.artifacts / "produce").exists()


def test_dry_run_with_force_says_forced(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    outcomes = run(config, GRAPH, RunRequest(dry_run=True, force=True))
    assert [(o.outcome, o.reasons) for o in outcomes] == [(Outcome.WOULD_RUN, ("forced",))] * 2


def test_target_runs_its_upstream_but_not_downstream(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _results(config, targets=("produce",)) == {"produce": Outcome.RAN}
    assert _results(config, targets=("consume",)) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.RAN}


def test_only_runs_a_single_stage_and_needs_its_upstream_outputs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    outcomes = run(config, GRAPH, RunRequest(targets=("consume",), only=True))
    assert [o.stage for o in outcomes] == ["consume"]
    assert outcomes[0].outcome is Outcome.FAILED and "run them first" in outcomes[0].summary


def test_unchanged_files_are_not_rehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    _results(config)
    calls: list[Path] = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: calls.append(path) or real(path))
    assert _results(config) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.UP_TO_DATE}
    assert calls == []
    os.utime(config.artifacts / "produce/value.txt", ns=(1, 1))
    assert _results(config) == {"produce": Outcome.UP_TO_DATE, "consume": Outcome.UP_TO_DATE}
    assert config.artifacts / "produce/value.txt" in calls


def _hold_lock(artifacts: str, ready: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with run_lock(Path(artifacts)):
        ready.set()
        release.wait(10)


def test_second_concurrent_run_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(str(config.artifacts), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(RunLockedError, match=rf"another pipeline run \(pid {holder.pid}\)"):
            run(config, GRAPH, RunRequest())
    finally:
        release.set()
        holder.join(10)
    assert _results(config)["consume"] is Outcome.RAN


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _results(config)
    stage_dir = config.artifacts / "consume"
    os.replace(stage_dir, stage_dir.with_name("consume.old"))
    assert _results(config)["consume"] is Outcome.UP_TO_DATE
    assert stage_dir.is_dir()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "is not JSON"), ('{"stages": {"consume": {"code": 1}}}', "is unreadable or from another version")],
)
def test_unreadable_lock_file_says_what_to_do(tmp_path: Path, content: str, problem: str) -> None:
    config = _config(tmp_path)
    _results(config)
    (config.artifacts / "pipeline.lock.json").write_text(content)
    with pytest.raises(UserError, match=rf"pipeline\.lock\.json {problem}.*delete it to rebuild every stage"):
        _results(config)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([Produce(), Produce()], "declared twice"),
        ([Consume()], "unknown stage 'produce'"),
    ],
)
def test_malformed_graphs_are_rejected(stages: list[Stage], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        StageGraph(stages)


def test_cycles_are_rejected() -> None:
    class Loop(Produce):
        after = ("consume",)

    with pytest.raises(GraphError, match="cycle"):
        StageGraph([Loop(), Consume()])


def test_an_artifacts_folder_holding_foreign_files_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """The runner cleans .tmp/ and swaps stage folders: in a folder of someone else's that deleted files."""
    config = _config(tmp_path)
    config.artifacts.mkdir()
    theirs = {".tmp/notes.txt": "mine", "produce/photo.jpg": "pixels", "thesis.tex": "words"}
    for name, text in theirs.items():
        (config.artifacts / name).parent.mkdir(parents=True, exist_ok=True)
        (config.artifacts / name).write_text(text)
    with pytest.raises(ConfigError, match=r"already holds files this pipeline did not make.*new or empty folder"):
        run(config, GRAPH, RunRequest())
    assert {
        p.relative_to(config.artifacts).as_posix(): p.read_text() for p in config.artifacts.rglob("*") if p.is_file()
    } == theirs


def test_another_pipeline_s_artifacts_inside_are_left_alone_unless_where_a_stage_writes(tmp_path: Path) -> None:
    """README's preview writes artifacts/local inside the default pipeline's artifacts/: both run, in either
    order; one in a stage's folder would be replaced by that stage, and is refused."""
    config = _config(tmp_path)
    preview = config.artifacts / "local"
    preview.mkdir(parents=True)
    claim_artifacts(preview)
    (preview / "export").mkdir()
    (preview / "export" / "model.onnx").write_text("the preview's")
    assert run(config, GRAPH, RunRequest())[-1].outcome is Outcome.RAN
    assert (preview / "export" / "model.onnx").read_text() == "the preview's"
    claim_artifacts(preview)  # and the preview runs again inside the default's folder

    (tmp_path / "other").mkdir()
    other = _config(tmp_path / "other")
    claim_artifacts(other.artifacts / "produce")
    with pytest.raises(ConfigError, match=r"produce is another pipeline's artifacts folder, where this pipeline"):
        run(other, GRAPH, RunRequest())


def test_an_empty_or_earlier_artifacts_folder_is_taken_and_marked(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.artifacts.mkdir()
    assert [o.outcome for o in run(config, GRAPH, RunRequest())] == [Outcome.RAN, Outcome.RAN]
    (config.artifacts / OWNER_MARKER).unlink()  # as an older release left it: its lock file says it is ours
    assert [o.outcome for o in run(config, GRAPH, RunRequest())] == [Outcome.UP_TO_DATE] * 2
    assert (config.artifacts / OWNER_MARKER).is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only filesystem needs root (CI runs as root)")
def test_a_read_only_artifacts_folder_is_one_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.artifacts.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(config.artifacts)], check=True)
    try:
        with pytest.raises(OSError) as failure:
            run(config, GRAPH, RunRequest())
    finally:
        subprocess.run(["umount", "-l", str(config.artifacts)], check=False)
    message = user_message(failure.value)
    assert is_user_error(failure.value) and message.startswith("Read-only file system: ")
    assert "set artifacts: to a writable folder" in message
