"""The one error base: everything a user can cause or fix, on the controller or the device.

A UserError formats its own message (plus an optional hint saying what to do), so a command prints it as one
line and a stage fails with it, never with a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelFilesError(UserError):
    """A file one stage wrote for another (or for the device) is missing, from another version, or does not
    match the others; the message names the file and the command that makes it again."""
