"""A stage's code identity is computed from what it imports, and its tools are the ones it declares."""

from __future__ import annotations

import inspect
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.code_identity import code_digest, import_closure
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
def test_code_a_stage_runs_is_part_of_its_identity(stage: str, module: str) -> None:
    """precision_table.py, which decides whether compile passes, was once missing from compile's identity."""
    assert REPO / module in STAGE[stage].code_files()


def test_the_registry_and_type_checking_imports_do_not_join_stages() -> None:
    """stages/export.py imports stages.config for its types only; stages.config takes the registry, which
    imports every stage: followed, that made every stage's code part of every other's."""
    assert not any(path.parent.name == "stages" and path.name != "export.py" for path in STAGE["export"].code_files())
    assert REPO / "toolchains/precision_table.py" not in STAGE["verify"].code_files()


def test_comments_docstrings_formatting_and_type_checking_imports_are_not_code(tmp_path: Path) -> None:
    original = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n"
        'def f(x):\n    """Doc."""\n    return x + 1\n'
    )
    same = [
        original.replace("return x + 1", "return x + 1  # why"),
        original.replace('"""Doc."""', '"""Another doc,\n    on two lines."""'),
        original.replace("return x + 1", "return (\n        x\n        + 1\n    )"),
        original.replace("import a", "import a, b"),
    ]
    different = [original.replace("x + 1", "x + 2"), original.replace("f(x)", "f(y)").replace("x +", "y +")]
    versions = iter(range(100))

    def digest(text: str) -> str:
        module = tmp_path / str(next(versions)) / "m.py"  # one file a version: digests are cached by mtime
        module.parent.mkdir()
        module.write_text(text)
        return code_digest([module])

    assert all(digest(text) == digest(original) for text in same)
    assert all(digest(text) != digest(original) for text in different)


def test_a_comment_in_compiles_table_parser_reruns_no_stage_and_a_behaviour_change_reruns_compile(
    tmp_path: Path,
) -> None:
    """On a copy of the project: an upgrade that only rewords a comment must not rerun a Pulsar2 compile."""
    starts = {name: Path(inspect.getfile(type(stage))) for name, stage in STAGE.items()}
    for path in {path for start in starts.values() for path in import_closure(start)}:
        copy = tmp_path / path.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)

    def versions() -> dict[str, str]:
        return {
            name: code_digest(import_closure(tmp_path / start.relative_to(REPO), tmp_path))
            for name, start in starts.items()
        }

    before = versions()
    parser = tmp_path / "toolchains/precision_table.py"
    source = parser.read_text()
    parser.write_text(source + "\n# a comment an upgrade added\n")
    assert versions() == before
    parser.write_text(source + "\nSTRICTER = True\n")
    changed = {name for name, version in versions().items() if version != before[name]}
    assert "compile" in changed and not changed & {"export", "verify", "calibrate", "embed-vocab"}


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
