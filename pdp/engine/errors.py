"""Errors raised while evaluating a condition; they make that one rule an error."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime


class EvalError(Exception):
    """A missing attribute or a type mismatch: an error of the rule, never a silent false."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def type_name(v: object) -> str:
    """How a value's type reads in a message."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, Mapping):
        return "record"
    if v is None:
        return "null"
    if isinstance(v, datetime):
        return "time"  # as the language calls it (`time(...)`, `now()`)
    return type(v).__name__


def a_type(v: object) -> str:
    """`an int`, `a string`: a value's type as it reads in a sentence."""
    name = type_name(v)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def type_error(what: str, v: object, source: object = None) -> EvalError:
    """`what` was needed and `v` came; `source`, when given, is where it came from (an
    attribute path), so that the policy author sees which attribute held it."""
    came = f" from `{source}`" if source is not None else ""
    return EvalError("type_error", f"{what}, got {a_type(v)}{came}")
