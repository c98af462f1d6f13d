"""Work on several devices at once: a thread per device over the existing transport (as Fabric's
ThreadingGroup runs a command on a group of hosts), and every device carried to its end even when another
fails, so one unplugged Pi costs only its own row of the summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pipeline.errors import is_user_error, user_message
from pipeline.terminal import print_table

MAX_THREADS = 32  # devices worked on at once; each holds one SSH connection
DEVICES_DIR = "devices"  # a device stage's outputs: <stage>/devices/<name>/


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceOutcome(Generic[T]):
    """What one device's work gave: its result, or the one-line user error that ended it."""

    device: str
    result: T | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def on_each(devices: Sequence[N], work: Callable[[N], T]) -> list[DeviceOutcome[T]]:
    """`work` on every device, concurrently; outcomes in the devices' order. One device runs in this thread
    and its error is raised as it is (as before fleets: Ctrl+C stops it at once, the message is its own);
    a bug (not a user error) always raises."""
    if len(devices) == 1:
        started = time.perf_counter()
        return [DeviceOutcome(devices[0].name, work(devices[0]), None, time.perf_counter() - started)]
    with ThreadPoolExecutor(max_workers=min(len(devices), MAX_THREADS), thread_name_prefix="device") as pool:
        futures = [pool.submit(_timed, work, device) for device in devices]
        return [future.result() for future in futures]


def _timed(work: Callable[[N], T], device: N) -> DeviceOutcome[T]:
    started = time.perf_counter()
    try:
        result = work(device)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        return DeviceOutcome(device.name, None, user_message(exc), time.perf_counter() - started)
    return DeviceOutcome(device.name, result, None, time.perf_counter() - started)


def failures(outcomes: Sequence[DeviceOutcome[object]]) -> list[str]:
    """`device: error` for every device that failed."""
    return [f"{o.device}: {o.error}" for o in outcomes if o.error is not None]


def print_outcomes(
    title: str, outcomes: Sequence[DeviceOutcome[T]], columns: Sequence[str], row: Callable[[T], Sequence[str]]
) -> None:
    """A row per device: its figures when it succeeded, its error when not (only for more than one device:
    one device's stage summary says it all)."""
    if len(outcomes) < 2:
        return
    width = len(columns)
    rows = [
        (o.device, "[green]ok[/]", f"{o.seconds:.1f}s", *row(o.result))
        if o.result is not None
        else (o.device, "[red]failed[/]", f"{o.seconds:.1f}s", o.error or "", *[""] * (width - 1))
        for o in outcomes
    ]
    print_table(title, ("device", "result", "time", *columns), rows)
