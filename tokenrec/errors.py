"""Typed errors. Each message names the file or table, the field, the counts and what to do next.

The CLI prints ``str(error)`` as one line and exits non-zero, so Airflow shows the reason in the task log.
"""

from __future__ import annotations


class TokenrecError(Exception):
    """Base class: an expected failure with a readable, one-line message."""


class ConfigError(TokenrecError):
    """An unknown key, a value of the wrong type, or an invalid combination of settings."""


class InputError(TokenrecError):
    """Raw input that cannot be read: missing or empty file, wrong delimiter, missing columns, ..."""

    def __init__(self, path: object, problem: str, fix: str, field: str | None = None) -> None:
        where = f"{path}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}. {fix}")
        self.path = str(path)
        self.field = field


class LakePathError(TokenrecError):
    """A path that would escape the configured lake root."""


class DataValidationError(TokenrecError):
    """A Great Expectations gate failed; ``report_path`` holds the full result as JSON."""

    def __init__(self, message: str, report_path: str | None = None) -> None:
        super().__init__(message)
        self.report_path = report_path


class LockTimeout(TokenrecError):
    """Another process held a lock (an ETL extending the ID maps) for longer than we were allowed to wait."""


class PublishError(TokenrecError):
    """An atomic publish could not complete; the previously published version is untouched."""
