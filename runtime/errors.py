"""The device runtime's errors: messages a user on the device can act on, all UserErrors (common/errors.py),
so the controller reports one from runtime code as a failed stage, and ModelFilesError is the one both
sides raise."""

from __future__ import annotations

from common.errors import UserError


class RuntimeErrorBase(UserError):
    """Base of the runtime's own errors (the server maps each kind to an HTTP status)."""


class BackendUnavailable(RuntimeErrorBase):
    """The backend for a model file cannot be used here (package missing, no NPU found)."""


class NpuBusy(RuntimeErrorBase):
    """The NPU stayed busy (our other requests, or another program holding the NPU lock) past the wait."""


class InvalidImage(RuntimeErrorBase):
    """The image cannot be decoded or fetched (A1111 answers these with 500)."""


class ImageTooLarge(InvalidImage):
    """The image, or the bytes at its URL, are over the configured limit."""


class ServerBusy(RuntimeErrorBase):
    """Every place is taken (the queue, the image decoders, the NPU past its wait): retry shortly."""


class OptionRefused(RuntimeErrorBase):
    """A POSTed option cannot be set; `detail` is a message, or pydantic's list of what was wrong."""

    def __init__(self, detail: str | list[dict[str, object]]) -> None:
        self.detail = detail
        super().__init__(detail if isinstance(detail, str) else "; ".join(str(d["msg"]) for d in detail))


class SettingsError(RuntimeErrorBase):
    """A setting or settings file of the service cannot be used, read or saved."""
