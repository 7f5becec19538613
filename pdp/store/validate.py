"""Checks every write goes through before it touches the database.

Kept free of SQLAlchemy so the CLI can validate arguments before opening a store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pdp.engine.bindings import check_scope, parse_subject_ref
from pdp.lang import ast
from pdp.lang.errors import did_you_mean
from pdp.store.errors import InvalidInput

GROUP_TYPE = "group"

# The longest subject key (`type:id`) and scope the store takes, in bytes of UTF-8.
# PostgreSQL refuses an index entry over 2,704 bytes, and the unique index on
# bindings holds (subject, scope, role): 1,000 + 1,000 + 200 (a role name) stays
# below it with room to spare. SQLite has no such limit, but the store refuses the
# same on both, so that what one database holds always imports into the other.
MAX_KEY_BYTES = 1000
MAX_ROLE_BYTES = 200


def check_length(text: str, what: str, limit: int = MAX_KEY_BYTES) -> str | None:
    """Why `text` is too long to store as a `what`, or None when it fits."""
    if len(text) * 4 <= limit:  # no UTF-8 character takes more than 4 bytes
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return None
    shown = text if len(text) <= 40 else text[:40] + "…"
    bytes_ = "" if size == len(text) else f" ({size:,} bytes of UTF-8)"
    return (
        f"{what} `{shown}` is too long: {len(text):,} characters{bytes_}; "
        f"the store takes at most {limit:,} bytes of UTF-8 ({limit:,} ASCII characters)"
    )


def _fits(text: str, what: str, limit: int = MAX_KEY_BYTES) -> str:
    why = check_length(text, what, limit)
    if why is not None:
        raise InvalidInput(why)
    return text


def subject_key(text: str) -> str:
    """`type:id` → the normalised key; `InvalidInput` with an example otherwise."""
    try:
        t, i = parse_subject_ref(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return _fits(f"{t}:{i}", "subject")


def group_key(text: str) -> str:
    """A subject key whose type is `group`."""
    key = subject_key(text)
    if not key.startswith(GROUP_TYPE + ":"):
        raise InvalidInput(f"`{text}` is not a group; group ids are `group:<name>`")
    return key


def scope(text: str) -> str:
    """`global`, `tenant/<t>` or `<type>/<id>`; `InvalidInput` otherwise."""
    try:
        check_scope(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return _fits(text, "scope")


def role_name(text: str) -> str:
    """A role name short enough to store (whether it is declared is `RoleCatalog`'s)."""
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"`{text}` is not a role name")
    return _fits(text, "role name", MAX_ROLE_BYTES)


def expiry(when: datetime | None, now: datetime) -> datetime | None:
    """An expiry must be aware and in the future: a binding that never held is a mistake."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidInput(f"expiry `{when.isoformat()}` has no time zone; add `Z` or an offset")
    why = time_range(when)
    if why is not None:
        raise InvalidInput(f"expiry {why}")
    if when <= now:
        raise InvalidInput(f"expiry `{_iso(when)}` is in the past (now is {_iso(now)})")
    return when


def time_range(when: datetime) -> str | None:
    """Why `when` cannot be stored (it is not a time in UTC, years 1 to 9999), or None."""
    try:
        when.astimezone(UTC)
    except OverflowError:
        return f"`{when.isoformat()}` is out of range: in UTC it falls outside the years 1 to 9999"
    return None


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
