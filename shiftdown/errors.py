"""Typed errors: the split between what a retry can fix and what it cannot.

Workers retry `RetryableError` with backoff; a `FatalError` is recorded against the
document (or input line) it concerns and never retried.
"""

from __future__ import annotations


class ShiftdownError(Exception):
    """Base class of every error shiftdown raises on purpose."""


class RetryableError(ShiftdownError):
    """A transient failure: the same call may succeed later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalError(ShiftdownError):
    """A failure that repeating the same call cannot fix."""


class ConfigError(FatalError):
    """Settings, a task or a model reference are missing or inconsistent."""


class TaxonomyError(FatalError):
    """A taxonomy file is unreadable, empty, or has duplicate or empty labels."""


class InputError(FatalError):
    """One input record is malformed; the rest of the input goes on."""

    def __init__(self, message: str, line_no: int | None = None) -> None:
        super().__init__(message)
        self.line_no = line_no


class ModelError(FatalError):
    """A model file cannot be loaded or does not fit its task."""


class FrontierRetryable(RetryableError):
    """The frontier endpoint was rate-limited, timed out or failed on its side."""


class FrontierFatal(FatalError):
    """The frontier endpoint refused the request or answered outside the taxonomy."""
