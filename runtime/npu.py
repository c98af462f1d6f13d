"""Access to the one NPU: a lock that other programs can share, and an image encoder that can leave it.

A Stable Diffusion server on the same board uses the same NPU. `NpuLock` serializes our NPU calls among
our threads, with the host program's own lock when we run inside it (its `unet_lock`), and across
processes with an exclusive `flock` on a file that the other program takes around its own NPU work.
Waiting is bounded: past the caller's limit the call fails with NpuBusy naming what held the NPU.

`ResidentModel` loads the image encoder on first use and unloads it after an idle period, so the NPU
memory is free for the other program while nobody interrogates; loading happens under the lock, once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import NpuBusy, SettingsError

POLL_S = (0.002, 0.05)  # first and longest sleep between tries of a taken flock


class HostLock(Protocol):
    """What a host program's lock offers: threading.Lock and RLock do."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


@dataclass
class LockStats:
    holds: int = 0
    waits: int = 0  # holds that found the NPU taken
    wait_ms_total: float = 0.0
    wait_ms_max: float = 0.0
    timeouts: int = 0

    def to_json(self) -> dict[str, float]:
        return {
            "holds": self.holds,
            "waits": self.waits,
            "wait_ms_total": round(self.wait_ms_total, 1),
            "wait_ms_max": round(self.wait_ms_max, 1),
            "timeouts": self.timeouts,
        }


def open_shared_lock(path: Path) -> int:
    """A descriptor to flock `path` with, that every user's process can get: flock needs only a read-only
    open, so an existing file (made by an SD server running as another user) is opened read-only; a new one
    is created 0666 whatever the umask (a 0644 file would refuse another user's read-write open)."""
    with contextlib.suppress(FileNotFoundError):
        return os.open(path, os.O_RDONLY)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another process made it just now
        return os.open(path, os.O_RDONLY)
    os.fchmod(fd, 0o666)
    return fd


class NpuLock:
    def __init__(self, lock_file: Path | None = None, host_lock: HostLock | None = None) -> None:
        self.lock_file = lock_file
        self._threads: HostLock = host_lock if host_lock is not None else threading.Lock()
        self._fd: int | None = None
        self.stats = LockStats()
        if lock_file is not None:
            try:
                self._fd = open_shared_lock(lock_file)
            except OSError as exc:
                raise SettingsError(
                    f"cannot open the NPU lock file {lock_file}: {exc.strerror} (its folder must exist and be "
                    "writable; /run/lock is on most Linux systems)"
                ) from exc

    @contextlib.contextmanager
    def hold(self, wait: float | None = None) -> Iterator[None]:
        """The NPU to ourselves: our threads first, then other processes. `wait` seconds at most in all."""
        started = time.monotonic()
        deadline = None if wait is None else started + wait
        if not self._threads.acquire(True, -1 if deadline is None else max(0.0, deadline - time.monotonic())):
            self._timed_out(started)
            raise NpuBusy(f"the encoder stayed busy with other requests for {wait:.0f} s")
        try:
            if self._fd is not None and not self._flock(deadline):
                self._timed_out(started)
                raise NpuBusy(f"another program held the NPU lock {self.lock_file} for {wait:.0f} s")
            try:
                self._record(started)
                yield
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    @contextlib.contextmanager
    def idle(self, wait: float | None = 0.0) -> Iterator[bool]:
        """Our threads' part of the lock, waiting up to `wait` s (0: not at all; None: as long as it takes):
        True when no request of ours uses the NPU."""
        got = self._threads.acquire(False) if wait == 0 else self._threads.acquire(True, -1 if wait is None else wait)
        try:
            yield got
        finally:
            if got:
                self._threads.release()

    def _flock(self, deadline: float | None) -> bool:
        assert self._fd is not None
        pause = POLL_S[0]
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, POLL_S[1])

    def _record(self, started: float) -> None:
        waited = (time.monotonic() - started) * 1e3
        self.stats.holds += 1
        if waited > 1.0:
            self.stats.waits += 1
            self.stats.wait_ms_total += waited
            self.stats.wait_ms_max = max(self.stats.wait_ms_max, waited)

    def _timed_out(self, started: float) -> None:
        self.stats.timeouts += 1
        self.stats.wait_ms_max = max(self.stats.wait_ms_max, (time.monotonic() - started) * 1e3)


class ResidentModel:
    """A model session opened on first use and closed after `unload_after` idle seconds (None: never).

    Call `get()` and run the session only while holding the NpuLock: loading then happens once however
    many requests arrive together, and never while another program uses the NPU. `unload_if_idle()`
    (called by a timer) takes the same lock, so a model is never closed under a running request."""

    def __init__(self, open_model: Callable[[], Any], npu: NpuLock, unload_after: float | None = None) -> None:
        self._open = open_model
        self._npu = npu
        self.unload_after = unload_after
        self._model: Any = None
        self.last_used = time.monotonic()
        self.loads = 0
        self.last_load_s: float | None = None  # seconds the last load took
        self.last_load_at: float | None = None  # wall-clock time of the last load
        self.unloads = 0
        self.describe: dict[str, str] = {}

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        """The session (loaded now if it was not); the caller holds the NpuLock."""
        self.last_used = time.monotonic()
        if self._model is None:
            started = time.perf_counter()
            self._model = self._open()
            self.last_load_s = time.perf_counter() - started
            self.last_load_at = time.time()
            self.loads += 1
            self.describe = {"backend": self._model.name, "provider": self._model.provider}
        return self._model

    def unload_if_idle(self) -> bool:
        if self.unload_after is None or self._model is None:
            return False
        if time.monotonic() - self.last_used < self.unload_after:
            return False
        return self._unload(self.unload_after)

    def unload(self, wait: float | None = None) -> bool:
        """Now (the `unload` endpoint): after a running request, never under it; loaded again on next use."""
        return self._unload(0.0, wait)

    def _unload(self, idle_for: float, wait: float | None = 0.0) -> bool:
        with self._npu.idle(wait) as idle:
            if not idle or self._model is None or time.monotonic() - self.last_used < idle_for:
                return False  # in use right now, or used since the check
            self._model = None  # the backend's session releases NPU and host memory when collected
            self.unloads += 1
            return True

    def state(self) -> dict[str, Any]:
        return {
            "state": "loaded" if self.loaded else "unloaded",
            "loads": self.loads,
            "unloads": self.unloads,
            "last_load_s": None if self.last_load_s is None else round(self.last_load_s, 3),
            "last_load_at": self.last_load_at,
            "unload_after_s": self.unload_after,
            **self.describe,
        }


class IdleUnloader:
    """A daemon thread that unloads each ResidentModel once it has been idle long enough."""

    def __init__(self, *models: ResidentModel) -> None:
        self._models = [m for m in models if m.unload_after is not None]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._models:
            return
        period = min(max(min(m.unload_after or 0.0 for m in self._models) / 4, 0.05), 5.0)

        def loop() -> None:
            while not self._stop.wait(period):
                for model in self._models:
                    model.unload_if_idle()

        self._thread = threading.Thread(target=loop, name="idle-unloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
