"""Domain errors. Messages name the offending value and what would be accepted."""

from __future__ import annotations


class SclakeError(Exception):
    """Base class: an error a user can act on; the CLI prints it as one line."""


class ConfigError(SclakeError):
    """Settings or files needed to run are missing or wrong."""


class LakeError(SclakeError):
    """The lake cannot be read or written (missing object, unreachable store)."""


class InputError(SclakeError):
    """An uploaded file cannot be used. ``reason`` says what is wrong, ``hint`` what to do."""

    def __init__(self, reason: str, hint: str = "", *, code: str = "invalid_input") -> None:
        self.reason = reason
        self.hint = hint
        self.code = code
        super().__init__(f"{reason}. {hint}".strip() if hint else reason)


class ModelFilesError(ConfigError):
    """Model files are absent or incomplete in the Helical cache layout."""
