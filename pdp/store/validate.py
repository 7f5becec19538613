"""Checks every write goes through before it touches the database.

Kept free of SQLAlchemy so the CLI can validate arguments before opening a store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pdp.engine.bindings import check_scope, parse_subject_ref
from pdp.lang import ast
from pdp.lang.errors import did_you_mean
from pdp.store.errors import InvalidInput

GROUP_TYPE = "group"


def subject_key(text: str) -> str:
    """`type:id` → the normalised key; `InvalidInput` with an example otherwise."""
    try:
        t, i = parse_subject_ref(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return f"{t}:{i}"


def group_key(text: str) -> str:
    """A subject key whose type is `group`."""
    key = subject_key(text)
    if not key.startswith(GROUP_TYPE + ":"):
        raise InvalidInput(f"`{text}` is not a group; group ids are `group:<name>`")
    return key


def scope(text: str) -> str:
    """`global`, `tenant/<t>` or `<type>/<id>`; `InvalidInput` otherwise."""
    try:
        return check_scope(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def expiry(when: datetime | None, now: datetime) -> datetime | None:
    """An expiry must be aware and in the future: a binding that never held is a mistake."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidInput(f"expiry `{when.isoformat()}` has no time zone; add `Z` or an offset")
    if when <= now:
        raise InvalidInput(f"expiry `{_iso(when)}` is in the past (now is {_iso(now)})")
    return when


def non_finite(value: object, path: str) -> str | None:
    """The path of a NaN or infinite number in an attribute value, or None.

    JSON has no such numbers (PostgreSQL refuses them), and a policy comparing NaN
    gets no answer: such a value is refused when written, with where it is.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, list | tuple):
        items: Iterable[tuple[str, object]] = ((f"{path}[{i}]", x) for i, x in enumerate(value))
    elif isinstance(value, Mapping):
        items = ((f"{path}.{k}", x) for k, x in value.items())
    else:
        return None
    return next((p for p in (non_finite(x, where) for where, x in items) if p), None)


def attributes(values: Mapping[str, object]) -> None:
    """`InvalidInput` for an attribute name that is not a non-empty string, or a value
    holding a NaN or infinite number."""
    for k, value in values.items():
        if not isinstance(k, str) or not k:
            raise InvalidInput(f"attribute name `{k}` must be a non-empty string")
        bad = non_finite(value, k)
        if bad is not None:
            raise InvalidInput(f"attribute `{bad}`: NaN and infinite numbers are not values")


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RoleCatalog:
    """The roles the loaded policies declare; only these may be granted.

    Derived roles come from conditions, never from bindings, so granting one is refused
    with its own message.
    """

    declared: frozenset[str]
    derived: frozenset[str] = frozenset()

    @classmethod
    def from_policy_set(cls, ps: ast.PolicySet) -> RoleCatalog:
        return cls(
            frozenset(r.name.name for r in ps.roles),
            frozenset(d.name.name for d in ps.derived_roles),
        )

    def check(self, role: str) -> str:
        """`role` if it can be granted; `InvalidInput` naming the problem otherwise."""
        if role in self.declared:
            return role
        if role in self.derived:
            raise InvalidInput(
                f"role `{role}` is a derived role (it comes from a condition); it cannot be granted"
            )
        hint = did_you_mean(role, self.declared)
        raise InvalidInput(
            f"role `{role}` is not declared by the loaded policies" + (f"; {hint}" if hint else "")
        )

    def check_all(self, roles: Iterable[str]) -> list[str]:
        """Every problem with `roles`, one message each (empty when all can be granted)."""
        problems: list[str] = []
        for role in sorted(set(roles)):
            try:
                self.check(role)
            except InvalidInput as exc:
                problems.append(exc.message)
        return problems
