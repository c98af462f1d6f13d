"""Reading a user's files (pipeline.yaml, vocabularies, labels and prompts files): every problem is one
ConfigError naming the file, never a traceback.

PyYAML's safe loader shares an aliased node instead of copying it, so ten levels of ten aliases load at once
but expand to 10^10 values the moment anything walks them (validation, a repr): the expanded size and depth
are measured first, by a walk that stops at the bound. A repeated key, which YAML silently resolves to the
last value, is an error naming both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

MAX_VALUES = 200_000  # scalars, lists and mappings after expanding aliases (a 100k-label inline list fits)
MAX_DEPTH = 40


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # other keys (null, a list): left to the constructor and to validation
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"line {line}: key {key!r} is given twice (first on line {seen[key]})",
                    hint="keep one of them: YAML would silently use the last",
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a `what`: "config file", "labels file" ...), or one ConfigError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start:,})", hint=f"save the {what} as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def read_lines(path: Path, what: str) -> list[str]:
    """The file's lines, split at line ends only: U+2028, U+0085 and form feeds inside a label stay in it
    (str.splitlines would cut a label there)."""
    text = read_text(path, what)
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


def read_yaml(path: Path, what: str) -> Any:
    """The file's data, or a ConfigError naming `path`."""
    text = read_text(path, what)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels are refused)") from None
    _check_size(path, data)
    return data


def _check_size(path: Path, data: Any) -> None:
    """Walk the data as validation will, aliases expanded, and stop at the first bound crossed."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{path}: holds more than {MAX_VALUES:,} values once its aliases (&name / *name) are expanded",
                hint="write the values out, or put long label lists in a labels_file",
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
