"""The question the engine answers, in the AuthZEN vocabulary, and how JSON becomes one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Subject:
    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def key(self) -> str:
        """`type:id`, the form bindings files and the store use."""
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class Resource:
    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # Scopes above this resource, nearest first, e.g. ("folder/7", "folder/1").
    ancestors: tuple[str, ...] = ()

    @property
    def tenant(self) -> str | None:
        t = self.properties.get("tenant")
        return t if isinstance(t, str) and t else None

    def scopes(self) -> tuple[str, ...]:
        """Every binding scope that reaches this resource, broadest first."""
        t = self.properties.get("tenant")
        own = f"{self.type}/{self.id}"
        # Written out (no `reversed`, no `self.tenant`): one lookup per decision.
        if isinstance(t, str) and t:
            return ("global", f"tenant/{t}", *self.ancestors[::-1], own)
        return ("global", *self.ancestors[::-1], own)


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    properties: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Request:
    """May `subject` do `action` on `resource` in `context`? `now` fixes the clock."""

    subject: Subject
    action: Action
    resource: Resource
    context: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    now: datetime | None = None


def is_scope_name(text: str) -> bool:
    """`type/id` with both parts present (`folder/7`; an id may hold more slashes)."""
    cut = text.find("/")
    return 0 < cut < len(text) - 1


class RequestError(ValueError):
    """A request that cannot be evaluated; `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"`{field}`: {message}")


def parse_request(obj: object, where: str = "") -> Request:
    """One AuthZEN-shaped evaluation (subject, action, resource, context) → `Request`."""
    if not isinstance(obj, Mapping):
        raise RequestError(where or "request", "must be an object")
    return Request(
        subject=_subject(obj.get("subject"), _join(where, "subject")),
        action=_action(obj.get("action"), _join(where, "action")),
        resource=_resource(obj.get("resource"), _join(where, "resource")),
        context=_mapping(obj.get("context"), _join(where, "context")),
    )


def parse_evaluations(obj: object) -> tuple[list[Request], bool]:
    """A request with `evaluations: [...]` (top-level keys are defaults) or a single one.

    Returns the requests and whether the input was a batch. An `actions` list is
    shorthand for one evaluation per action.
    """
    if not isinstance(obj, Mapping):
        raise RequestError("request", "must be an object")
    defaults = {k: obj[k] for k in ("subject", "action", "resource", "context") if k in obj}
    if "evaluations" in obj:
        items = obj["evaluations"]
        if not isinstance(items, list):
            raise RequestError("evaluations", "must be a list")
        return [
            parse_request({**defaults, **_obj(e, f"evaluations[{i}]")}, f"evaluations[{i}]")
            for i, e in enumerate(items)
        ], True
    if "actions" in obj:
        acts = obj["actions"]
        if not isinstance(acts, list) or not acts:
            raise RequestError("actions", "must be a non-empty list")
        return [
            parse_request({**defaults, "action": a}, f"actions[{i}]") for i, a in enumerate(acts)
        ], True
    return [parse_request(defaults)], False


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RequestError(where, "must be an object")
    return value


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{where}.{key}", "is required and must be a non-empty string")
    return value


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise RequestError(where, "must be an object")
    return value


def _subject(value: object, where: str) -> Subject:
    obj = _obj(value, where)
    return Subject(
        _text(obj, "type", where),
        _text(obj, "id", where),
        _mapping(obj.get("properties"), f"{where}.properties"),
    )


def _action(value: object, where: str) -> Action:
    obj = _obj(value, where)
    return Action(_text(obj, "name", where), _mapping(obj.get("properties"), f"{where}.properties"))


def _resource(value: object, where: str) -> Resource:
    obj = _obj(value, where)
    ancestors = obj.get("ancestors") or ()
    if not isinstance(ancestors, list | tuple) or not all(
        isinstance(a, str) and is_scope_name(a) for a in ancestors
    ):
        raise RequestError(f"{where}.ancestors", "must be a list of `type/id` strings")
    return Resource(
        _text(obj, "type", where),
        _text(obj, "id", where),
        _mapping(obj.get("properties"), f"{where}.properties"),
        tuple(ancestors),
    )
