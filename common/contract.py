"""One way to write and read a JSON file that crosses a boundary (stage to stage, controller to device).

Each such file is a frozen dataclass that also derives from JsonFile, naming its file and the command that
makes it as class arguments. pydantic checks what is read against the dataclass's fields and types, so a
missing, foreign or older file ends in one ModelFilesError that says which file and which command makes
it again, never in a KeyError deep inside a reader.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import TypeAdapter, ValidationError

from common.atomic import atomic_write_text
from common.errors import ModelFilesError

T = TypeVar("T", bound="JsonFile")


class JsonFile:
    """Mixin for a frozen dataclass stored as `FILE` in a stage's output folder:
    `class ExportInfo(JsonFile, file="export.json", made_by="invoke export")`."""

    FILE: ClassVar[str]
    MADE_BY: ClassVar[str]  # the command that writes it, named in every error about it

    def __init_subclass__(cls, *, file: str, made_by: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.FILE, cls.MADE_BY = file, made_by

    @classmethod
    def remedy(cls) -> str:
        """What the user does about an unreadable file: by default, make it again."""
        return f"run `{cls.MADE_BY}`"

    def to_json(self) -> dict[str, Any]:
        return _adapter(type(self)).dump_python(self, mode="json")

    def write(self, directory: Path) -> Path:
        return self.write_to(Path(directory) / self.FILE)

    def write_to(self, path: Path) -> Path:
        """Under another name (a report the device writes where the controller asks, a stage's report)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json(cls: type[T], data: Any, where: str = "") -> T:
        try:
            return _adapter(cls).validate_python(data)
        except ValidationError as exc:
            raise ModelFilesError(
                f"{where or cls.FILE} is unreadable or from another version ({_first_problem(exc)}): {cls.remedy()}"
            ) from None

    @classmethod
    def read(cls: type[T], directory: Path) -> T:
        path = Path(directory) / cls.FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            on_device = "" if cls.MADE_BY == "invoke fetch" else " (on a device: `invoke fetch`)"
            raise ModelFilesError(f"{path}: {exc.strerror}: run `{cls.MADE_BY}`{on_device}") from exc
        except ValueError as exc:
            raise ModelFilesError(f"{path} is not JSON ({exc}): {cls.remedy()}") from exc
        return cls.from_json(data, str(path))


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    """One validator per contract, built on first use (building one walks every nested field)."""
    return TypeAdapter(cls)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "top level"
    more = f", and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg'].lower()}{more}"
