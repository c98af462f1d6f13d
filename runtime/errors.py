"""The device runtime's error family: messages a user on the device can act on."""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base of every runtime error with a user-actionable message."""

    user_error = True  # the controller's engine reports it as a failed stage (pipeline.errors.is_user_error)


class BackendUnavailable(RuntimeErrorBase):
    """The backend for a model file cannot be used here (package missing, no NPU found)."""


class ModelFilesError(RuntimeErrorBase):
    """The models directory is missing files or holds inconsistent ones."""


class NpuBusy(RuntimeErrorBase):
    """The NPU stayed busy (our other requests, or another program holding the NPU lock) past the wait."""
