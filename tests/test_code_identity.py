"""A stage's code identity is computed from what it imports, and its tools are the ones it declares."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from pipeline.code_identity import import_closure
from pipeline.graph import StageGraph
from pipeline.runner import RunRequest, plan
from stages import ALL_STAGES
from stages.export import ExportStage
from tests.helpers import REPO

STAGE = {stage.name: stage for stage in ALL_STAGES}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_closure_follows_imports_in_functions_relative_ones_and_names_taken_from_packages(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/stage.py": "import json\ndef run():\n    from lib.helper import go\n    from hosts import connect\n",
            "lib/__init__.py": "from lib import unrelated\n",
            "lib/helper.py": "from .deep import x\n",
            "lib/deep.py": "import numpy\n",
            "lib/unrelated.py": "",
            "hosts/__init__.py": "def connect():\n    from hosts.ssh import Ssh\n",
            "hosts/ssh.py": "",
        },
    )
    found = {p.relative_to(tmp_path).as_posix() for p in import_closure(tmp_path / "app/stage.py", tmp_path)}
    assert found == {
        "app/stage.py",
        "lib/__init__.py",
        "lib/helper.py",
        "lib/deep.py",
        "hosts/__init__.py",
        "hosts/ssh.py",
    }


@pytest.mark.parametrize(
    ("stage", "module"),
    [
        ("compile", "toolchains/precision_table.py"),
        ("verify", "runtime/tokenizer.py"),
        ("verify", "runtime/golden.py"),
        ("fetch", "pipeline/hosts/ssh.py"),
        ("smoke-test", "runtime/server/app.py"),
    ],
)
def test_code_a_stage_runs_is_part_of_its_identity(stage: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Appending a line to precision_table.py, which decides whether compile passes, once left it up to date."""
    before = STAGE[stage].code_version()
    path = REPO / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# changed\n")
        assert STAGE[stage].code_version() != before
    finally:
        path.write_bytes(original)
    assert STAGE[stage].code_version() == before


def test_a_tool_upgrade_reruns_only_the_stages_that_use_it(tiny_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_pipeline()
    graph = StageGraph(ALL_STAGES)
    built = RunRequest(targets=("compile", "embed-vocab"))  # fetch's device folder moved with the copy
    assert all(not d.stale for _, d in plan(config, graph, built))
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "99.0" if name == "pillow" else real(name))
    decisions = {s.name: d for s, d in plan(config, graph, built)}
    assert not decisions["export"].stale and not decisions["embed-vocab"].stale
    assert any(reason.startswith("pillow ") and reason.endswith("-> 99.0") for reason in decisions["verify"].reasons)
    assert any(reason.startswith("pillow ") for reason in decisions["calibrate"].reasons)


def test_export_watches_every_file_of_a_local_model_folder(write_config, tmp_path: Path) -> None:
    model = tmp_path / "my-clip"
    names = [
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "spiece.model",
        "vocab.txt",
        "special_tokens_map.json",
        "sub/extra.bin",
        ".git/HEAD",
        ".cache/x.lock",
    ]
    _write(model, {name: "x" for name in names})
    from stages.config import load_config

    config = load_config(write_config({"model": {"id": str(model)}}))
    stage = ExportStage()
    watched = {p.relative_to(model).as_posix() for p in stage.external_inputs(stage.params(config))}
    assert watched == {name for name in names if not name.startswith(".")}
