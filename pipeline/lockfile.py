"""The lock file: what each stage last ran with and produced (DVC's dvc.lock, doit's dep file).

Kept apart from the up-to-date logic: this module only reads and writes records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.files import FileState, write_json

LOCK_NAME = "pipeline.lock.json"
_FORMAT = 1


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

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "params_digest": self.params_digest,
            "code": self.code,
            "tools": self.tools,
            "inputs": {name: state.to_json() for name, state in self.inputs.items()},
            "outputs": {name: state.to_json() for name, state in self.outputs.items()},
            "host": self.host,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "figures": self.figures,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        return cls(
            params=data["params"],
            params_digest=data["params_digest"],
            code=data["code"],
            tools=data["tools"],
            inputs={name: FileState.from_json(state) for name, state in data["inputs"].items()},
            outputs={name: FileState.from_json(state) for name, state in data["outputs"].items()},
            host=data["host"],
            started_at=data["started_at"],
            seconds=float(data["seconds"]),
            figures=data.get("figures", {}),
        )


def read_lock(artifacts: Path) -> dict[str, StageRecord]:
    path = artifacts / LOCK_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: StageRecord.from_json(rec) for name, rec in data["stages"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{path}: lock file is unreadable ({exc})",
            hint="delete it to rebuild every stage, or restore it from a backup",
        ) from exc


def write_lock(artifacts: Path, records: dict[str, StageRecord]) -> None:
    data = {"format": _FORMAT, "stages": {name: rec.to_json() for name, rec in sorted(records.items())}}
    write_json(artifacts / LOCK_NAME, data)
