"""What a compiled condition reads: one request's attributes, roles and clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pdp.engine.request import Request

Condition = Callable[["Env"], object]


class Env:
    """Per-request evaluation state. Built once per request, shared by its actions."""

    __slots__ = (
        "request",
        "subject",
        "resource",
        "action",
        "sprops",
        "rprops",
        "aprops",
        "context",
        "roles",
        "derived",
        "derived_conditions",
        "per_action",
        "_now",
    )

    def __init__(
        self,
        request: Request,
        roles: frozenset[str],
        derived_conditions: Mapping[tuple[str, str], Condition],
    ) -> None:
        self.request = request
        self.subject = request.subject
        self.resource = request.resource
        self.action = request.action
        self.sprops: Mapping[str, Any] = request.subject.properties
        self.rprops: Mapping[str, Any] = request.resource.properties
        self.aprops: Mapping[str, Any] = request.action.properties
        self.context: Mapping[str, Any] = request.context
        self.roles = roles
        # Derived roles already evaluated for this request: name → held, or the error.
        self.derived: dict[str, bool | Exception] = {}
        self.derived_conditions = derived_conditions
        self.per_action: frozenset[str] = frozenset()
        self._now = request.now

    def with_action(self, request: Request) -> Env:
        """The same state for another action of the same subject and resource."""
        env = Env(request, self.roles, self.derived_conditions)
        # A derived role whose condition reads `action` must be evaluated per action.
        env.derived = {k: v for k, v in self.derived.items() if k not in self.per_action}
        env.per_action = self.per_action
        env._now = self._now
        return env

    @property
    def now(self) -> datetime:
        if self._now is None:
            self._now = datetime.now(UTC)
        return self._now
