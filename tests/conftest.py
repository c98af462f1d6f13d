"""Shared fixtures: config files written per test, and one tiny-CLIP pipeline run reused by many tests."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.graph import StageGraph
from pipeline.runner import RunRequest, run
from runtime.clip import VOCAB_DIR, ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables
from stages.config import PipelineConfig, load_config
from tests.helpers import STAGES, device_set, tiny_config_dict
from tests.loopback import app_clients
from tests.sshd import SshServer, start_sshd


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a YAML config (a dict, or raw text) into tmp_path and return its path."""

    def write(data: dict | str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def built_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage run once on the tiny CLIP; tests copy the result rather than rebuild it."""
    from stages import ALL_STAGES

    root = tmp_path_factory.mktemp("built")
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(root / "artifacts")), encoding="utf-8")
    outcomes = run(load_config(path), StageGraph(ALL_STAGES), RunRequest())
    assert [o.outcome.value for o in outcomes] == ["ran"] * len(STAGES), outcomes
    return root / "artifacts"


@pytest.fixture(scope="module")
def interrogator(built_artifacts: Path) -> Interrogator:
    """The built device models, loaded as the server loads them (image encoder and label tables)."""
    models = device_set(built_artifacts.parent / "device" / "models")
    return Interrogator(ClipRuntime.load(models), LabelTables.load(models / VOCAB_DIR))


@pytest.fixture
def serve(interrogator: Interrogator) -> Iterator[Callable[..., httpx.Client]]:
    """serve(limits=ConnectionLimits, **ServerSettings) -> an httpx client of a fresh app on a real
    uvicorn; closed after the test."""
    with app_clients() as start:
        yield functools.partial(start, interrogator)


@pytest.fixture
def tiny_pipeline(built_artifacts: Path, tmp_path: Path) -> Callable[..., PipelineConfig]:
    """A private copy of the built artifacts plus a config pointing at it, with optional overrides."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built_artifacts, artifacts, copy_function=shutil.copy2)

    def make(hosts: dict | None = None, device: dict | None = None, **stage_overrides: dict) -> PipelineConfig:
        data = tiny_config_dict(artifacts)
        data["hosts"].update(hosts or {})
        if device:
            data["device"] = device
        for stage, values in stage_overrides.items():
            data["stages"][stage].update(values)
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 for the whole session (see tests/sshd.py)."""
    process, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def standin_docker(ssh_server: SshServer) -> Iterator[Callable[..., None]]:
    """Set the stand-in docker's behaviour for one test (images present, exit code); reset after."""
    control = ssh_server.bin_dir / "standin.json"

    def configure(**behaviour: object) -> None:
        control.write_text(json.dumps(behaviour))

    yield configure
    control.unlink(missing_ok=True)
    for record in ("builds.log", "stopped.log", "runs.log"):
        (ssh_server.bin_dir / record).unlink(missing_ok=True)
    shutil.rmtree(ssh_server.bin_dir / "containers", ignore_errors=True)
