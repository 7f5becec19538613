"""What a compiled condition reads: one request's attributes, roles and clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pdp.engine.request import Action, Request, Resource, Subject

Condition = Callable[["Env"], object]


class Env:
    """Per-request evaluation state. Built once per subject and resource, shared by
    their actions: `set_action` moves it to the next one.

    Never shared between threads: each decide call builds its own and drops it.
    """

    __slots__ = (
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
        "shared",
        "_now",
    )

    def __init__(
        self,
        subject: Subject,
        action: Action,
        resource: Resource,
        context: Mapping[str, Any],
        now: datetime | None,
        roles: frozenset[str],
        derived_conditions: Mapping[tuple[str, str], Condition],
        per_action: frozenset[str] = frozenset(),
    ) -> None:
        self.subject = subject
        self.resource = resource
        self.action = action
        self.sprops: Mapping[str, Any] = subject.properties
        self.rprops: Mapping[str, Any] = resource.properties
        self.aprops: Mapping[str, Any] = action.properties
        self.context: Mapping[str, Any] = context
        self.roles = roles
        # Derived roles already evaluated for this request: name → held, or the error.
        self.derived: dict[str, bool | Exception] = {}
        self.derived_conditions = derived_conditions
        # Derived roles whose condition reads `action`: forgotten by `set_action`.
        self.per_action = per_action
        # Set when several actions share this state: rule id → the value (or error) of
        # that rule's condition, for conditions that do not read `action`.
        self.shared: dict[str, bool | Exception] | None = None
        self._now = now

    @classmethod
    def of(
        cls,
        request: Request,
        roles: frozenset[str],
        derived_conditions: Mapping[tuple[str, str], Condition],
    ) -> Env:
        """The state for one request."""
        return cls(
            request.subject,
            request.action,
            request.resource,
            request.context,
            request.now,
            roles,
            derived_conditions,
        )

    def set_action(self, action: Action) -> None:
        """Move to another action of the same subject, resource and context.

        Derived roles that do not read `action` stay known; the others are evaluated
        again for the new action. The clock stays the one of the first action.
        """
        self.action = action
        self.aprops = action.properties
        if self.per_action and self.derived:
            for name in self.per_action:
                self.derived.pop(name, None)

    @property
    def now(self) -> datetime:
        if self._now is None:
            self._now = datetime.now(UTC)
        return self._now
