"""Errors a user can act on.

Every error raised for bad input carries one line that names the field, the value and what is
allowed; the CLI prints that line and exits with the error's code, never a traceback.
"""

from __future__ import annotations


class BatchscaleError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class SpecError(BatchscaleError):
    """A spec (YAML file or ``--set`` override) is invalid."""

    exit_code = 2

    def __init__(self, key: str, value: object, allowed: str, source: str | None = None):
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}key '{key}': value {_short(value)} is not allowed; {allowed}")


class DatasetMissing(BatchscaleError):
    """A dataset's files are not where we looked; the message says how to get them."""

    exit_code = 3


class SweepConflict(BatchscaleError):
    """A sweep name is reused with a different spec (never silently mixed)."""

    exit_code = 4


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
