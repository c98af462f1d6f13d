"""The layering README's Layout describes: dependencies point down, never up (imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# package -> the top-level packages of this repository it may not import
FORBIDDEN = {
    "pipeline": {"stages", "modeling", "toolchains", "runtime", "commands", "tasks"},
    "runtime": {"pipeline", "stages", "modeling", "toolchains", "commands", "tasks"},
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
