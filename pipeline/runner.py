"""Run the stale stages in order: temp output dir, swap in on success, record in the lock file."""

from __future__ import annotations

import contextlib
import enum
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from pipeline.config import EngineConfig
from pipeline.errors import PipelineError, is_user_error, user_message
from pipeline.files import recover_swapped_dir, swap_in_dir
from pipeline.graph import StageGraph
from pipeline.records import StageRecord, read_records, write_records
from pipeline.runlock import run_lock
from pipeline.stage import Stage, StageContext, digest_values
from pipeline.uptodate import (
    Decision,
    current_states,
    decide,
    input_files,
    output_files,
    params_digest,
    tool_versions,
)

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    RAN = "ran"
    UP_TO_DATE = "up to date"
    WOULD_RUN = "would run"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    outcome: Outcome
    reasons: tuple[str, ...]
    seconds: float = 0.0
    summary: str = ""


class Reporter(Protocol):
    """Told as stages start and finish, so the terminal can show progress while work goes on."""

    def stage_started(self, stage: str, reasons: tuple[str, ...]) -> None: ...

    def stage_finished(self, outcome: StageOutcome) -> None: ...


class SilentReporter:
    def stage_started(self, stage: str, reasons: tuple[str, ...]) -> None:
        log.info("%s: running (%s)", stage, "; ".join(reasons))

    def stage_finished(self, outcome: StageOutcome) -> None:
        log.info("%s: %s", outcome.stage, outcome.outcome.value)


@dataclass(frozen=True)
class RunRequest:
    targets: tuple[str, ...] | None = None
    force: bool = False
    dry_run: bool = False
    only: bool = False


def plan(config: EngineConfig, graph: StageGraph, request: RunRequest) -> list[tuple[Stage, Decision]]:
    """Every considered stage with its up-to-date decision, without running anything."""
    records = read_records(config.artifacts)
    decisions: list[tuple[Stage, Decision]] = []
    stale: set[str] = set()
    for stage in graph.order(request.targets, with_upstream=not request.only):
        upstream = [dep for dep in stage.after if dep in stale]
        decision = decide(stage, config, records, upstream)
        if decision.stale:
            stale.add(stage.name)
        decisions.append((stage, decision))
    return decisions


def run(
    config: EngineConfig,
    graph: StageGraph,
    request: RunRequest,
    reporter: Reporter | None = None,
) -> list[StageOutcome]:
    """Run what is stale (or everything with force), telling `reporter` as each stage starts and ends."""
    reporter = reporter or SilentReporter()
    if request.dry_run:
        outcomes = [
            StageOutcome(s.name, Outcome.WOULD_RUN, ("forced",) if request.force else d.reasons)
            if d.stale or request.force
            else StageOutcome(s.name, Outcome.UP_TO_DATE, d.reasons)
            for s, d in plan(config, graph, request)
        ]
        for outcome in outcomes:
            reporter.stage_finished(outcome)
        return outcomes
    with run_lock(config.artifacts, frozenset(graph.stages)):
        try:
            return _run_locked(config, graph, request, reporter)
        finally:
            with contextlib.suppress(OSError):  # removed when empty: nothing half-written stays behind
                (config.artifacts / ".tmp").rmdir()


def _run_locked(
    config: EngineConfig,
    graph: StageGraph,
    request: RunRequest,
    reporter: Reporter,
) -> list[StageOutcome]:
    # We hold the run lock: anything in .tmp was left by a run that was killed before it could clean up.
    shutil.rmtree(config.artifacts / ".tmp", ignore_errors=True)
    outcomes: list[StageOutcome] = []
    failed: list[str] = []  # in run order
    broken: dict[str, set[str]] = {}  # stage that did not run or failed -> the failed stages it waited on
    for stage in graph.order(request.targets, with_upstream=not request.only):
        recover_swapped_dir(config.artifacts / stage.name)
        causes = set().union(*(broken[dep] for dep in stage.after if dep in broken))
        if causes:
            broken[stage.name] = causes
            named = ", ".join(name for name in failed if name in causes)  # the failures, not every skip between
            outcome = StageOutcome(stage.name, Outcome.SKIPPED, (f"upstream {named} failed",))
        else:
            records = read_records(config.artifacts)
            # Under --force the reason is the flag: what a forced upstream run changed is its consequence.
            reasons = ("forced",) if request.force else decide(stage, config, records, []).reasons
            if not reasons:
                outcome = StageOutcome(stage.name, Outcome.UP_TO_DATE, ())
            else:
                reporter.stage_started(stage.name, reasons)
                outcome = _run_stage(stage, config, reasons, records)
                if outcome.outcome is Outcome.FAILED:
                    failed.append(stage.name)
                    broken[stage.name] = {stage.name}
        outcomes.append(outcome)
        reporter.stage_finished(outcome)
    return outcomes


def _run_stage(
    stage: Stage,
    config: EngineConfig,
    reasons: tuple[str, ...],
    records: dict[str, StageRecord],
) -> StageOutcome:
    missing_upstream = [dep for dep in stage.after if not (config.artifacts / dep).is_dir()]
    if missing_upstream:
        needs = f"needs the outputs of {', '.join(missing_upstream)}; run them first"
        return StageOutcome(stage.name, Outcome.FAILED, reasons, summary=needs)
    previous = records.get(stage.name)
    params = stage.params(config)
    inputs = current_states(input_files(stage, config, params), previous.inputs if previous else {})
    recorded = digest_values(params)
    tmp_root = config.artifacts / ".tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    out_dir = tempfile.mkdtemp(prefix=f"{stage.name}-", dir=tmp_root)
    ctx = StageContext(stage.name, params, config.artifacts, Path(out_dir), logging.getLogger(f"stage.{stage.name}"))
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        result = stage.run(ctx)
        missing = [name for name in stage.outputs if not (ctx.out_dir / name).exists()]
        if missing:
            raise PipelineError(f"{stage.name} did not write its declared outputs: {', '.join(missing)}")
        swap_in_dir(ctx.out_dir, config.artifacts / stage.name)
    except BaseException as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        if is_user_error(exc):
            return StageOutcome(stage.name, Outcome.FAILED, reasons, time.perf_counter() - started, user_message(exc))
        raise
    seconds = time.perf_counter() - started
    outputs = current_states(output_files(stage, config), {})
    record = StageRecord(
        params=recorded,
        params_digest=params_digest(recorded),
        code=stage.code_version(),
        tools=tool_versions(stage.tools),
        inputs=inputs,
        outputs=outputs,
        host=stage.host_name(config),
        started_at=started_at,
        seconds=round(seconds, 3),
        figures=result.figures,
    )
    records = read_records(config.artifacts)
    records[stage.name] = record
    write_records(config.artifacts, records)
    return StageOutcome(stage.name, Outcome.RAN, reasons, seconds, result.summary)
