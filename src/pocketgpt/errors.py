"""The errors that carry a user's bad input from the library to a boundary (the CLI, the server).

Every library error caused by input (a setting out of range, a missing or corrupt file, text outside a
vocabulary) is an InputError, so that a boundary can turn exactly those into a one-line message and a
non-zero exit or a 4xx status, and let anything else (a bug) surface as one. A SettingsError names the
fields it is about, never a CLI flag or a JSON parameter: the boundary names those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class InputError(ValueError):
    """Bad input: the message says what was wrong and, where it can, how to fix it."""


class SettingsError(InputError):
    """One or more settings out of range; `problems` holds (field, what is wrong with it) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.named(lambda field: field))

    def named(self, name: Callable[[str], str]) -> str:
        """The message with each field written as name(field) (e.g. a CLI flag)."""
        return "; ".join(f"{name(field)} {problem}" for field, problem in self.problems)

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


def check_settings(checks: Iterable[tuple[bool, str, str]]) -> None:
    """Raise a SettingsError for every (ok, field, problem) whose ok is false."""
    problems = [(field, problem) for ok, field, problem in checks if not ok]
    if problems:
        raise SettingsError(problems)
