"""The lock file, artifacts/pipeline.lock.json: what each stage last ran with and produced (DVC's dvc.lock,
doit's dep file). In code these are the stage records, so "lock" means only mutual exclusion.

Kept apart from the up-to-date logic: this module only reads and writes records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.contract import JsonFile
from pipeline.files import FileState


@dataclass(frozen=True)
class StageRecord:
    params: dict[str, Any]
    params_digest: str
    code: str
    tools: dict[str, str]
    inputs: dict[str, FileState]
    outputs: dict[str, FileState]
    host: str
    started_at: str
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)  # the stage's StageResult.figures


@dataclass(frozen=True)
class StageRecords(JsonFile, file="pipeline.lock.json", made_by="invoke all"):
    stages: dict[str, StageRecord]
    format: int = 1

    @classmethod
    def remedy(cls) -> str:
        return "delete it to rebuild every stage, or restore it from a backup"


def read_records(artifacts: Path) -> dict[str, StageRecord]:
    """Every stage's record; none before the first run."""
    if not (artifacts / StageRecords.FILE).exists():
        return {}
    return dict(StageRecords.read(artifacts).stages)


def write_records(artifacts: Path, records: dict[str, StageRecord]) -> None:
    StageRecords(dict(sorted(records.items()))).write(artifacts)
