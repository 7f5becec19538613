"""Source files and positions: every AST node and error points back at its text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A span in a policy file; lines and columns count from 1, end is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @property
    def short(self) -> str:
        """`file:line`, the form rule ids and reasons use."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A policy file's name (relative to the policy root) and its text."""

    name: str
    text: str

    def line_text(self, line: int) -> str:
        """The text of line `line` (1-based), without its newline; empty when out of range."""
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 1 <= line <= len(lines) else ""

    def loc_at(self, offset: int, length: int = 1) -> SourceLoc:
        """The location of a character offset, spanning `length` characters on its line."""
        line = self.text.count("\n", 0, offset) + 1
        start_of_line = self.text.rfind("\n", 0, offset) + 1
        column = offset - start_of_line + 1
        return SourceLoc(self.name, line, column, line, column + max(length, 1))
