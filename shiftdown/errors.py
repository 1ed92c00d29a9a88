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


class RecordError(FatalError):
    """Input records are malformed (the table of rejected lines is ``schema.InputError``)."""

    def __init__(self, message: str, line_no: int | None = None) -> None:
        super().__init__(message)
        self.line_no = line_no


class ModelError(FatalError):
    """A model file cannot be loaded or does not fit its task."""
