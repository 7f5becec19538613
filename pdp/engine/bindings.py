"""Who holds which role where: the in-memory binding model the SQL store also fills.

A binding gives a subject (user, service or group) a role within a scope:
`global`, `tenant/<t>`, or one resource `<type>/<id>` (which reaches its
descendants when a request names their ancestors).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from pdp.lang.graph import cycles

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-@+]*"
_SUBJECT_RE = re.compile(rf"^({_NAME}):([^\s]+)$")
_SCOPE_RE = re.compile(rf"^(global|tenant/[^\s/]+|{_NAME}/[^\s]+)$")


def parse_subject_ref(text: str) -> tuple[str, str]:
    """`type:id` → (type, id); ValueError with a clear message otherwise."""
    m = _SUBJECT_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"`{text}` is not a subject; write `type:id`, e.g. `user:alice`")
    return m.group(1), m.group(2)


def check_scope(text: str) -> str:
    """Validate a scope: `global`, `tenant/<t>` or `<type>/<id>`."""
    if (
        not isinstance(text, str)
        or not _SCOPE_RE.match(text)
        or (text.startswith("tenant/") and text.count("/") != 1)
    ):
        raise ValueError(f"`{text}` is not a scope; write `global`, `tenant/<t>` or `<type>/<id>`")
    return text


@dataclass(frozen=True, slots=True)
class RoleBinding:
    subject: str  # `type:id`; a group is `group:<id>`
    role: str
    scope: str = "global"
    expires: datetime | None = None
    created_by: str | None = None
    created_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires is None or self.expires > now


class RoleSource(Protocol):
    """Where effective roles come from: the in-memory model or the SQL store.

    A source that may wait on I/O (a database) calls `pdp.store.blocking.check_may_block`
    first: on the server's event loop that moves the call to the thread pool.
    """

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        """Roles bound to `subject` or its groups (nested) in any of `scopes`, unexpired."""
        ...

    def attributes(self, subject: str) -> Mapping[str, Any]:
        """Stored (trusted) attributes of `subject`; empty when unknown."""
        ...


@dataclass(frozen=True)
class Bindings:
    """An immutable in-memory binding set, indexed for lookups by subject and scope."""

    subjects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)  # group key → members
    bindings: tuple[RoleBinding, ...] = ()
    _by_principal: Mapping[str, Mapping[str, tuple[RoleBinding, ...]]] = field(
        init=False, repr=False, compare=False
    )
    _member_of: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _groups_cache: dict[str, frozenset[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _scoped_cache: dict[str, Mapping[str, tuple[RoleBinding, ...]]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        by: dict[str, dict[str, list[RoleBinding]]] = defaultdict(lambda: defaultdict(list))
        for b in self.bindings:
            by[b.subject][b.scope].append(b)
        frozen = {s: {sc: tuple(bs) for sc, bs in d.items()} for s, d in by.items()}
        object.__setattr__(self, "_by_principal", MappingProxyType(frozen))
        parents: dict[str, set[str]] = defaultdict(set)
        for group, members in self.groups.items():
            for m in members:
                parents[m].add(group)
        object.__setattr__(
            self, "_member_of", MappingProxyType({k: frozenset(v) for k, v in parents.items()})
        )

    def groups_of(self, subject: str) -> frozenset[str]:
        """Every group `subject` belongs to, directly or through nested groups."""
        known = self._groups_cache.get(subject)
        if known is not None:
            return known
        seen: set[str] = set()
        todo = list(self._member_of.get(subject, ()))
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(self._member_of.get(g, ()))
        result = frozenset(seen)
        # The set is immutable, so the closure never changes; a racing writer stores
        # the same value.
        self._groups_cache[subject] = result
        return result

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        by_scope = self._scoped(subject)
        if not by_scope:
            return frozenset()
        roles: set[str] = set()
        for scope in scopes:
            for b in by_scope.get(scope, ()):
                if b.expires is None or b.expires > now:
                    roles.add(b.role)
        return frozenset(roles)

    def _scoped(self, subject: str) -> Mapping[str, tuple[RoleBinding, ...]]:
        """scope → the bindings of `subject` and of all its groups there.

        Merged once per subject, so that a lookup reads each scope once rather than
        once per principal.
        """
        known = self._scoped_cache.get(subject)
        if known is not None:
            return known
        merged: dict[str, list[RoleBinding]] = {}
        for principal in (subject, *self.groups_of(subject)):
            for scope, bs in self._by_principal.get(principal, {}).items():
                merged.setdefault(scope, []).extend(bs)
        result = MappingProxyType({s: tuple(bs) for s, bs in merged.items()})
        # As for groups: immutable, so a racing writer stores the same value. A subject
        # with no bindings at all is not kept, so unknown callers do not grow the cache.
        if result:
            self._scoped_cache[subject] = result
        return result

    def attributes(self, subject: str) -> Mapping[str, Any]:
        return self.subjects.get(subject, MappingProxyType({}))

    def declared_roles(self) -> frozenset[str]:
        return frozenset(b.role for b in self.bindings)


def group_cycle(groups: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A membership cycle among groups, as a path, or None."""
    return next(cycles({g: list(ms) for g, ms in groups.items()}), None)
