"""One exception family for everything a user can cause or fix.

Each error formats its own message from the context it carries, so the command line prints it as one
line (plus an optional tail of log output) instead of a traceback.
"""

from __future__ import annotations

import errno

from common.errors import UserError


class PipelineError(UserError):
    """Base of the engine's errors (config, hosts, stages); UserError formats the message and hint."""


# What the machine refused, not a bug: the disk is full, or a folder is read-only or not ours to write.
_DISK_ERRORS = {
    errno.ENOSPC: "free space on that disk (or set artifacts: to another), then run again",
    errno.EDQUOT: "free space within your quota (or set artifacts: to another disk), then run again",
    errno.EROFS: "that filesystem is read-only: set artifacts: to a writable folder",
    errno.EACCES: "make it writable for this user, or set artifacts: to a folder you can write",
    errno.EPERM: "make it writable for this user, or set artifacts: to a folder you can write",
}


def is_user_error(exc: BaseException) -> bool:
    """A UserError of either side, or a full or read-only disk. Each fails a stage or a command with its
    message (see `user_message`), never a traceback."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in _DISK_ERRORS)


def user_message(exc: BaseException) -> str:
    """The one line a user error is reported as."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where} ({_DISK_ERRORS[exc.errno]})"
    return str(exc)


class ConfigError(PipelineError):
    """pipeline.yaml is unreadable or invalid; the message names the file and the key path."""


class ModelLoadError(PipelineError):
    """The model id or directory cannot be loaded as a model of a supported family."""


class StageError(PipelineError):
    """A stage failed; carries the stage name so the summary can say which one."""

    def __init__(self, stage: str, message: str, *, hint: str = "") -> None:
        self.stage = stage
        super().__init__(f"{stage}: {message}", hint=hint)


class ValidationFailed(StageError):
    """One or more checks of a validation report failed; lists every failure at once."""

    def __init__(self, stage: str, failures: list[str], report_path: str) -> None:
        self.failures = failures
        listed = "; ".join(failures)
        super().__init__(stage, f"{len(failures)} check(s) failed: {listed}", hint=f"full report: {report_path}")


class HostError(PipelineError):
    """A host could not be reached, or a command on it failed; carries the host and the output tail."""

    def __init__(
        self,
        host: str,
        message: str,
        *,
        hint: str = "",
        command: str = "",
        exit_code: int | None = None,
        tail: list[str] | None = None,
    ) -> None:
        self.host = host
        self.command = command
        self.exit_code = exit_code
        self.tail = tail or []
        super().__init__(f"{host}: {message}", hint=hint)

    def __str__(self) -> str:
        text = super().__str__()
        if self.tail:
            text += "\n  last lines of output:\n" + "\n".join(f"    {line}" for line in self.tail)
        return text


class RunLockedError(PipelineError):
    """Another pipeline run holds the artifacts directory."""


class GraphError(PipelineError):
    """The stage graph is malformed (unknown stage, duplicate, cycle)."""


class ConnectionLost(HostError):
    """The connection to a host broke mid-operation: worth reconnecting and trying again."""
