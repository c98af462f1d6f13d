"""A stage's code identity: the project modules its own module imports, and theirs, found by reading them.

A hand-kept list of helper modules went stale (a precision-table parser that decides whether compile passes
was missing from it, so editing it left compile up to date). The closure is computed from the source with
`ast`, imports inside functions included, without importing anything (a no-op run never pays for torch).
Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too: their own text is part of it, but what
they import is followed only when the code takes a name from the package itself (`from a import f`), so a
registry such as stages/__init__.py does not make every stage part of every other. Imports under
`if TYPE_CHECKING:` are for the type checker and never run, so they are not followed.

A Python file counts by its syntax tree with docstrings and `TYPE_CHECKING` blocks left out, so a comment,
a reworded docstring or a reformat leaves every stage up to date: a tool upgrade that changes no behaviour
must not rerun a Pulsar2 compile of hours. Other files (what a stage ships) count by their bytes.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from common.hashing import sha256_file, sha256_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def module_file(name: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The project file of a dotted module name, or None when it is not the project's (stdlib, packages)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(start: Path, root: Path = PROJECT_ROOT) -> list[Path]:
    """`start` and every project file it imports, directly or not (sorted)."""
    files: set[Path] = {start.resolve()}
    followed: set[Path] = set()
    pending = [start.resolve()]
    while pending:
        path = pending.pop()
        if path in followed:
            continue
        followed.add(path)
        for found, follow in _project_imports(path, path.stat().st_mtime_ns, root):
            files.add(found)
            if follow:
                pending.append(found)
    return sorted(files)


def code_digest(files: list[Path]) -> str:
    """One digest of the files' paths (relative to the project) and code (see the module's docstring)."""
    return sha256_text("\n".join(f"{_relative(path)}:{_file_digest(path)}" for path in sorted(set(files))))


def _file_digest(path: Path) -> str:
    if path.suffix != ".py":
        return sha256_file(path)
    stat = path.stat()
    return _code_digest(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _code_digest(path: Path, mtime_ns: int, size: int) -> str:
    """The digest of what the file runs; read once per version of the file (mtime and size are the key)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    return sha256_text(ast.dump(_WithoutDocsOrTypeChecking().visit(tree), include_attributes=False))


class _WithoutDocsOrTypeChecking(ast.NodeTransformer):
    """Drops docstrings and `if TYPE_CHECKING:` bodies (an `else:` runs, so it stays)."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        documented = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        if documented and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
        return super().generic_visit(node)

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt] | None:
        if _is_type_checking(node.test):
            return [self.visit(statement) for statement in node.orelse] or None
        return self.generic_visit(node)


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.lru_cache(maxsize=1024)
def _project_imports(path: Path, mtime_ns: int, root: Path) -> tuple[tuple[Path, bool], ...]:
    """The project files `path` imports, each with whether to follow it; read once per version of the file
    (mtime_ns is part of the key), so a no-op run over every stage parses each module once."""
    found = ((module_file(name, root), follow) for name, follow in _imported_names(path, root))
    return tuple((file, follow) for file, follow in found if file is not None)


def _imported_names(path: Path, root: Path) -> list[tuple[str, bool]]:
    """Every module the file imports, with whether its own imports are followed: the module named is,
    its parent packages are not; `from a import b` follows a.b when it is a module, else a (b is a name
    in a). Relative imports are resolved against the file's package."""
    names: list[tuple[str, bool]] = []
    for node in _statements(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names += [*_parents(alias.name), (alias.name, True)]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path, root)
            modules = [f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}", root)]
            takes_names = len(modules) < len(node.names)
            names += [*_parents(base), (base, takes_names), *((module, True) for module in modules)]
    return names


def _statements(tree: ast.Module) -> list[ast.AST]:
    """Every statement that can run, nested ones too (imports sit in function, class, if and try bodies);
    expressions, most of a tree, are not walked, nor are `if TYPE_CHECKING:` bodies."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        skip_body = isinstance(node, ast.If) and _is_type_checking(node.test)
        for body in ("body", "orelse", "finalbody", "handlers", "cases"):
            if not (skip_body and body == "body"):
                pending.extend(getattr(node, body, None) or [])
    return found


def _absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    if not node.level:
        return node.module or ""
    package = path.parent.relative_to(root).parts
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _parents(name: str) -> list[tuple[str, bool]]:
    parts = name.split(".")
    return [(".".join(parts[:i]), False) for i in range(1, len(parts))]


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return path.name
