"""Is a stage up to date? A status plus the list of reasons, so `invoke status` can say why.

Up to date means: a record exists, same params, same stage code and tool versions, same input hashes,
every recorded output still present and unchanged, and whatever the stage keeps on a device still there.
Hashes come through the size+mtime shortcut; an output is hashed in full when a downstream stage last
read it at another size or mtime, so bytes changed under a restored mtime make their own stage stale
instead of being consumed downstream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from common.hashing import sha256_text
from pipeline.config import EngineConfig
from pipeline.files import FileState, canonical_json, file_state, list_files
from pipeline.records import StageRecord
from pipeline.stage import Stage, digest_values


class Status(enum.Enum):
    UP_TO_DATE = "up to date"
    STALE = "stale"


@dataclass(frozen=True)
class Decision:
    status: Status
    reasons: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return self.status is Status.STALE


def tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each tool a stage declares (Stage.tools); another version reruns it."""
    versions = {}
    for tool in tools:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "absent"
    return versions


def params_digest(params: dict[str, Any]) -> str:
    return sha256_text(canonical_json(params))


def input_files(stage: Stage, config: EngineConfig, params: BaseModel) -> dict[str, Path]:
    """Every file the stage reads: upstream stages' outputs (keyed `stage/rel`) and external files
    (named by its `params`, built once by the caller)."""
    files: dict[str, Path] = {}
    for dep in stage.after:
        root = config.artifacts / dep
        for path in list_files(root):
            files[f"{dep}/{path.relative_to(root).as_posix()}"] = path
    for external in stage.external_inputs(params):
        for path in list_files(external):
            files[str(path)] = path
    return files


def current_states(files: dict[str, Path], known: dict[str, FileState]) -> dict[str, FileState]:
    return {key: file_state(path, known.get(key)) for key, path in files.items()}


def output_files(stage: Stage, config: EngineConfig) -> dict[str, Path]:
    root = config.artifacts / stage.name
    return {path.relative_to(root).as_posix(): path for path in list_files(root)}


def decide(
    stage: Stage,
    config: EngineConfig,
    records: dict[str, StageRecord],
    stale_upstream: list[str],
) -> Decision:
    """`records`: the whole lock, since other stages' records tell how this stage's outputs were read."""
    record = records.get(stage.name)
    if record is None:
        return Decision(Status.STALE, ("never run",))
    reasons: list[str] = [f"upstream {name} will run first" for name in stale_upstream]
    params = stage.params(config)
    reasons += _param_changes(record.params, digest_values(params))
    if record.code != stage.code_version():
        reasons.append("stage code changed")
    reasons += [
        f"{tool} {record.tools.get(tool, 'absent')} -> {version}"
        for tool, version in tool_versions(stage.tools).items()
        if record.tools.get(tool, "absent") != version
    ]
    if not stale_upstream:
        reasons += _file_changes("input", input_files(stage, config, params), record.inputs)
    reasons += _output_changes(stage, config, records)
    if not reasons:  # the one check that may cross the network, when nothing else already decided
        reasons += stage.remote_changes(params, config.artifacts)
    return Decision(Status.STALE if reasons else Status.UP_TO_DATE, tuple(reasons))


def _param_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(before, dict) and isinstance(after, dict):
            changes += _param_changes(before, after, prefix=f"{path}.")
        elif _named(before) and _named(after):  # a list of named sections (devices): by name
            old_items, new_items = ({item["name"]: item for item in items} for items in (before, after))
            changes += [f"param {path}: {name} removed" for name in old_items if name not in new_items]
            changes += [f"param {path}: {name} added" for name in new_items if name not in old_items]
            for name in old_items.keys() & new_items.keys():
                changes += _param_changes(old_items[name], new_items[name], prefix=f"{path}[{name}].")
        elif canonical_json(before) != canonical_json(after):
            changes.append(f"param {path}: {_short(before)} -> {_short(after)}")
    return changes


def _named(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value)


def _short(value: Any) -> str:
    text = canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _file_changes(kind: str, files: dict[str, Path], recorded: dict[str, FileState]) -> list[str]:
    reasons = [f"{kind} {key} removed" for key in sorted(set(recorded) - set(files))]
    reasons += [f"{kind} {key} added" for key in sorted(set(files) - set(recorded))]
    for key in sorted(set(files) & set(recorded)):
        if file_state(files[key], recorded[key]).sha256 != recorded[key].sha256:
            reasons.append(f"{kind} {key} changed")
    return reasons


def _output_changes(stage: Stage, config: EngineConfig, records: dict[str, StageRecord]) -> list[str]:
    recorded = records[stage.name].outputs
    present = output_files(stage, config)
    reasons = [f"output {stage.name}/{key} missing" for key in sorted(set(recorded) - set(present))]
    for key in sorted(set(recorded) & set(present)):
        read_as = [r.inputs[f"{stage.name}/{key}"] for r in records.values() if f"{stage.name}/{key}" in r.inputs]
        if _changed(present[key], recorded[key], read_as):
            reasons.append(f"output {stage.name}/{key} modified since it was written")
    return reasons


def _changed(path: Path, written: FileState, read_as: list[FileState]) -> bool:
    """Whether the file's bytes differ from those written. The shortcut trusts an unchanged size and
    mtime; a downstream stage that read the file at another size or mtime would hash it and could see
    other bytes, so then it is hashed here first."""
    current = file_state(path, written)
    if current.sha256 != written.sha256:
        return True
    shortcut = (current.size, current.mtime_ns) == (written.size, written.mtime_ns)
    if shortcut and any((seen.size, seen.mtime_ns) != (current.size, current.mtime_ns) for seen in read_as):
        return file_state(path).sha256 != written.sha256
    return False
