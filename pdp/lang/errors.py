"""One error type for everything a policy author can get wrong, with stable codes.

Messages follow one house style: lowercase, no final period, user input in
backticks, never a parser-internal name.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pdp.lang.source import SourceLoc


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class PolicyError:
    """A problem in a policy, schema or test file, located at a span of its text."""

    code: str
    message: str
    loc: SourceLoc | None
    help: str | None = None
    severity: Severity = Severity.ERROR
    # The text of the located line, kept so that an error renders on its own.
    source_line: str = field(default="", compare=False)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def render(self) -> str:
        """The error as people read it: position, code, message, the line and a caret."""
        where = f"{self.loc}: " if self.loc else ""
        out = [f"{where}{self.severity.value}[{self.code}]: {self.message}"]
        if self.loc is not None and self.source_line:
            line = self.source_line.expandtabs(1)
            if self.loc.end_line == self.loc.line:
                width = max(self.loc.end_column - self.loc.column, 1)
            else:
                width = max(len(line) - self.loc.column + 1, 1)
            shown, offset, width = _excerpt(line, self.loc.column - 1, width)
            out.append(f"    {shown}")
            out.append("    " + " " * offset + "^" * width)
        if self.help:
            out.append(f"  help: {self.help}")
        return "\n".join(out)

    def to_json(self) -> dict[str, object]:
        """A plain dict for `--json` output."""
        loc = self.loc
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "end_line": loc.end_line if loc else None,
            "end_column": loc.end_column if loc else None,
            "help": self.help,
        }


class PolicyLoadError(Exception):
    """Raised when a policy set cannot be loaded; carries every error found, never empty."""

    def __init__(self, errors: Sequence[PolicyError]) -> None:
        assert errors, "PolicyLoadError needs at least one error"
        self.errors = tuple(errors)
        super().__init__(render_all(self.errors))


SHOWN_COLUMNS = 100
_CONTROL = {c: "\ufffd" for c in [*range(32), 127]}


def _excerpt(line: str, start: int, width: int) -> tuple[str, int, int]:
    """The part of `line` to show around column `start`: (text, caret offset, caret width).

    A generated or minified line can be megabytes long; the reader needs the spot,
    not the whole line. Control characters would move the caret, so they are shown
    as U+FFFD, one column each.
    """
    line = line.translate(_CONTROL)
    if len(line) <= SHOWN_COLUMNS:
        return line, start, width
    lo = max(0, min(start - SHOWN_COLUMNS // 3, len(line) - SHOWN_COLUMNS))
    hi = lo + SHOWN_COLUMNS
    head = "…" if lo > 0 else ""
    tail = "…" if hi < len(line) else ""
    return head + line[lo:hi] + tail, len(head) + start - lo, max(1, min(width, hi - start))


def render_all(errors: Iterable[PolicyError]) -> str:
    """Render errors one after another, separated by blank lines."""
    return "\n\n".join(e.render() for e in errors)


def errors_to_json(errors: Iterable[PolicyError]) -> str:
    return json.dumps([e.to_json() for e in errors], indent=2)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name`, if one is close enough to be a likely typo."""
    pool = sorted(set(candidates))
    # A difference of case only (`@Id`) is the likeliest typo, however short the name.
    same = [c for c in pool if c != name and c.lower() == name.lower()]
    if same:
        return same[0]
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help:` text suggesting the closest candidate, if one is close enough."""
    match = closest(name, candidates)
    return f"did you mean `{match}`?" if match else None
