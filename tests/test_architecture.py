"""The layering README's Layout describes: dependencies point down, never up (imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# package -> the top-level packages of this repository it may not import
FORBIDDEN = {
    "common": {"pipeline", "deploy", "labels", "stages", "modeling", "toolchains", "runtime", "commands", "tasks"},
    "pipeline": {"deploy", "labels", "stages", "modeling", "toolchains", "runtime", "commands", "tasks"},
    "runtime": {"pipeline", "deploy", "labels", "stages", "modeling", "toolchains", "commands", "tasks"},
    "deploy": {"labels", "stages", "modeling", "toolchains", "commands", "tasks"},
    "labels": {"deploy", "stages", "modeling", "toolchains", "commands", "tasks"},
    "toolchains": {"stages", "commands", "tasks"},
    "modeling": {"stages", "commands", "tasks"},
    "stages": {"commands", "tasks"},
}


def _imports(path: Path) -> set[str]:
    """Every top-level package a module imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    upward = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in _imports(path) & FORBIDDEN[package]
    }
    assert not upward, sorted(upward)


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from stages.export import ExportStage\n    import commands.cli\n")
    assert _imports(module) == {"stages", "commands"}


def _modules_importing(folder: Path, prefix: str) -> list[str]:
    """Modules in `folder` (not below it) that import `prefix` or a module below it, wherever the import is."""
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(name == prefix or name.startswith(f"{prefix}.") for name in names):
                found.append(path.name)
    return found


def test_the_runtime_core_does_not_import_its_http_layer() -> None:
    """Captioning and the embedded API run without the server: the server builds on the core, not back."""
    assert _modules_importing(REPO / "runtime", "runtime.server") == []


def test_the_engine_names_no_stage_and_defines_no_stage_settings() -> None:
    """pipeline/ knows stages only through the Stage interface: adding a stage setting touches its module."""
    from stages import ALL_STAGES

    names = {stage.name for stage in ALL_STAGES}
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} names stage {node.value!r}")
            if isinstance(node, ast.ClassDef) and node.name.endswith("Params"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} defines {node.name}")
    assert found == []


def test_the_http_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    (tmp_path / "core.py").write_text("def f():\n    from runtime.server.app import create_app\n")
    assert _modules_importing(tmp_path, "runtime.server") == ["core.py"]


def test_no_product_function_is_over_sixty_lines() -> None:
    """Long functions hide steps that deserve names (STYLE.md); tests and benches are not held to it."""
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in ("common", "pipeline", "stages", "modeling", "toolchains", "runtime", "commands")
        for path in sorted((REPO / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
