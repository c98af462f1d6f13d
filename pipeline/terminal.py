"""What the user reads in the terminal: check lines, rich tables for stage status and run summaries."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


@dataclass(frozen=True)
class Check:
    """One line of a stage's checks: every check runs, then the stage fails once listing the failures."""

    name: str
    passed: bool
    detail: str


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`1 caption`, `2 captions` (`plural` where adding an s is wrong)."""
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"


def print_checks(title: str, checks: Sequence[Check]) -> None:
    """Every check on a line; failures first so they are not lost in a long operator inventory."""
    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for check in sorted(checks, key=lambda c: c.passed):
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.detail)
    console.print(table)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@contextlib.contextmanager
def progress_steps(stage: str) -> Iterator[Callable[[str], None]]:
    """A spinner naming the step a long stage is at (`step("exporting the text encoder")`); nothing is
    printed where the output is not a terminal."""
    with console.status(f"{stage}: starting") as status:
        yield lambda step: status.update(f"{stage}: {step}")
