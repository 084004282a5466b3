"""Errors a user can fix. Every message says what is wrong *and* what to do about it.

The command line turns a `UserError` into one message on stderr and exit code 2; the studio
shows it as text. Anything that is not a `UserError` is a bug or an environment failure and
keeps its traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_PROBLEMS_SHOWN = 10


class UserError(Exception):
    """Bad input (settings, files, model ids): the message names the culprit and the fix."""


class ConfigError(UserError):
    """One or more invalid `RunConfig` settings, all reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"{len(self.problems)} invalid setting{'s' if len(self.problems) != 1 else ''}: "
        super().__init__(head + "; ".join(self.problems))


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with one row of a data file.

    row: 1-based line number (jsonl, txt, csv) or record number (json, parquet); None when the
    problem concerns the whole file. field: the column or path inside the row
    (e.g. ``messages[2].role``); None when no single field is to blame.
    message: what is wrong and how to fix it.
    """

    row: int | None
    field: str | None
    message: str
    row_kind: str = "line"  # "line" or "record", so the reader knows what the number counts

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"{self.row_kind} {self.row}")
        if self.field:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " if where else "") + self.message


class DataError(UserError):
    """A data file that cannot be used. Lists up to 10 problems and the total count.

    The first line of the message is complete on its own (file, row, field, fix), so a one-line
    display still tells the user everything needed for the first fix.
    """

    def __init__(self, path: str, problems: list[DataProblem]):
        self.path = str(path)
        self.problems = list(problems)
        self.total = len(self.problems)
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        first = f"{self.path}: {shown[0]}" if shown else f"{self.path}: unusable data"
        if self.total > 1:
            first += f" (+{self.total - 1} more problem{'s' if self.total > 2 else ''})"
        lines = [first]
        if self.total > 1:
            lines += [f"  - {p}" for p in shown]
            if self.total > len(shown):
                lines.append(f"  ... {self.total - len(shown)} more not shown ({self.total} problems in all)")
        super().__init__("\n".join(lines))


def hide_tokens(text: str | None, *tokens: str | None) -> str | None:
    """`text` with HF_TOKEN and any other `tokens` replaced by ***: a library may echo a
    request, token included, into its exception, and nothing we write or show may hold one."""
    for token in (os.environ.get("HF_TOKEN"), *tokens):
        if text and token:
            text = text.replace(token, "***")
    return text
