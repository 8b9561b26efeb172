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

    def __init__(self, key: str, value: object, allowed: str, source: str | None = None,
                 choices: list[str] | None = None):
        self.key, self.value, self.allowed, self.source, self.choices = key, value, allowed, source, choices
        where = f"{source}: " if source else ""
        guess = did_you_mean(value, choices) if choices else ""
        super().__init__(f"{where}key '{key}': value {_short(value)} is not allowed{guess}; {allowed}")


    def with_source(self, source: str | None) -> "SpecError":
        return SpecError(self.key, self.value, self.allowed, source, self.choices)


class DatasetMissing(BatchscaleError):
    """A dataset's files are not where we looked; the message says how to get them."""

    exit_code = 3


class SweepConflict(BatchscaleError):
    """A sweep name is reused with a different spec (never silently mixed)."""

    exit_code = 4


class ResultsFolderError(BatchscaleError):
    """The results folder cannot be used: a file where a folder belongs, not writable, or in use
    by another sweep (harness.sweep.lock)."""

    exit_code = 5


def did_you_mean(value: object, choices) -> str:
    """`` (did you mean 'legw'?)`` for a misspelt or mis-cased name, else ''."""
    import difflib

    if not isinstance(value, str):
        return ""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower().replace("-", "_"), list(by_lower), n=1, cutoff=0.75) or \
        difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close and by_lower[close[0]] != value else ""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
