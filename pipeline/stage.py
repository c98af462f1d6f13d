"""What a stage is: declared data (name, upstream stages, inputs, outputs, typed params) plus one action.

A stage's params are a frozen pydantic model holding every setting it reads, built from the config by
`params`: the engine digests exactly that model into the lock (so a new setting cannot fail to make the
stage stale) and hands the same object to `run` as `ctx.params`; `run` never sees the config. A field
marked `exclude=True` (how to reach a host, not what is made there) is handed over but not digested.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from pipeline.code_identity import code_digest, import_closure

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class StageContext(Generic[P]):
    """What `run` gets: its params, where to write, and where upstream (and its own last) outputs are."""

    stage: str
    params: P
    artifacts: Path
    out_dir: Path
    log: logging.Logger

    def upstream(self, stage: str) -> Path:
        """A stage's last good outputs (this stage's own too: what the run being made will replace)."""
        return self.artifacts / stage

    @property
    def report_file(self) -> Path:
        """This stage's human-readable report of this attempt, kept even when it fails."""
        return report_file(self.artifacts, self.stage)

    def part_report_file(self, part: str) -> Path:
        """The report of one part of this attempt (one device of several), kept even when it fails."""
        return part_report_file(self.artifacts, self.stage, part)

    @property
    def cache_dir(self) -> Path:
        """Shared, stage-independent cache (for example the materialized built-in tiny CLIP)."""
        return self.artifacts / "cache"


@dataclass(frozen=True)
class StageResult:
    """A one-line summary for the terminal and figures kept in the lock file."""

    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """Subclasses declare the class attributes and implement `params` and `run`."""

    name: ClassVar[str]
    help: ClassVar[str]
    after: tuple[str, ...] = ()  # a class's upstream stages; an instance may add some (fetch with a tagger)
    outputs: ClassVar[tuple[str, ...]] = ()
    tools: ClassVar[tuple[str, ...]] = ()  # distributions whose version changes what it makes (torch, onnx ...)
    # The type of its section under `stages:` in the config (a pydantic model, possibly Annotated with a
    # validator), or None for a stage without settings: the config's schema is assembled from these.
    settings: ClassVar[Any] = None
    # The stage whose section under `stages:` this one reads when it has none of its own (tagger-compile:
    # compile's), so that `--host` on it sets that section's host.
    settings_of: ClassVar[str | None] = None

    @abstractmethod
    def params(self, config: Any) -> BaseModel:
        """Every setting this stage reads, typed (see the module's docstring)."""

    def host_name(self, config: Any) -> str:
        """The host this stage works on (recorded in the lock file); a stage that works elsewhere says so."""
        return "local"

    def external_inputs(self, params: Any) -> list[Path]:
        """Files outside artifacts/ that this stage reads (images, local model weights)."""
        return []

    def remote_changes(self, params: Any, artifacts: Path) -> list[str]:
        """For a stage whose work depends on another machine (fetch: the device's set; compile: the build
        host's toolchain): what is no longer as it was left, each a reason to run again. Asked only when
        nothing else makes the stage stale."""
        return []

    @abstractmethod
    def run(self, ctx: StageContext[Any]) -> StageResult:
        """Do the work, writing only below `ctx.out_dir`."""

    def shipped_files(self) -> list[Path]:
        """Files this stage puts on another machine and runs there (the device runtime): its code too."""
        return []

    def code_files(self) -> list[Path]:
        """This stage's module, every project module it imports (computed, see code_identity), and what
        it ships."""
        return import_closure(Path(inspect.getfile(type(self)))) + self.shipped_files()

    def code_version(self) -> str:
        """Digest of `code_files`: changed code reruns the stage; a changed comment does not."""
        return code_digest(self.code_files())


def report_file(artifacts: Path, stage: str) -> Path:
    """Where a stage keeps the report of its last attempt: artifacts/reports/<stage>.json (not tracked)."""
    return artifacts / "reports" / f"{stage}.json"


def part_report_file(artifacts: Path, stage: str, part: str) -> Path:
    """artifacts/reports/<stage>/<part>.json: a stage that works on several devices keeps one per device."""
    return artifacts / "reports" / stage / f"{part}.json"


def digest_values(params: BaseModel) -> dict[str, Any]:
    """The params as the lock records and digests them: plain data, excluded fields left out."""
    return params.model_dump(mode="json")
