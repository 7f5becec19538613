"""The question the engine answers, in the AuthZEN vocabulary, and how JSON becomes one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from pdp.lang.errors import did_you_mean

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# The keys each part of a request may have; anything else is a typo to report, not
# to ignore (a misspelt `properties` would otherwise decide as if it were absent).
SUBJECT_KEYS = ("type", "id", "properties")
ACTION_KEYS = ("name", "properties")
RESOURCE_KEYS = ("type", "id", "properties", "ancestors")
EVALUATION_KEYS = ("subject", "action", "resource", "context")
REQUEST_KEYS = (*EVALUATION_KEYS, "evaluations", "actions")
_KEYS = {"subject": SUBJECT_KEYS, "action": ACTION_KEYS, "resource": RESOURCE_KEYS}
# Keys of the AuthZEN API and of our gRPC service that an offline request cannot honour.
_NOT_OFFLINE = {
    "options": "is not supported offline; every evaluation is decided",
    "semantic": "is not supported offline; every evaluation is decided",
    "credential": "is not supported offline; give the `subject` instead",
}


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
    _known_keys(obj, EVALUATION_KEYS, where or "request")
    return _request(obj, where, _join(where, "action"))


def parse_evaluations(obj: object) -> tuple[list[Request], bool]:
    """A request with `evaluations: [...]` (top-level keys are defaults) or a single one.

    Returns the requests and whether the input was a batch. An `actions` list is
    shorthand for one evaluation per action.
    """
    if not isinstance(obj, Mapping):
        raise RequestError("request", "must be an object")
    for key in obj:
        if key in _NOT_OFFLINE:
            raise RequestError(key, _NOT_OFFLINE[key])
    _known_keys(obj, REQUEST_KEYS, "request")
    defaults = {k: obj[k] for k in EVALUATION_KEYS if k in obj}
    if "actions" in obj and "evaluations" in obj:
        # The list would be ignored: refuse rather than decide something else than asked.
        raise RequestError("actions", "cannot be used together with `evaluations`")
    if "evaluations" in obj:
        items = obj["evaluations"]
        if not isinstance(items, list):
            raise RequestError("evaluations", "must be a list")
        if not items:  # AuthZEN 1.0 §7.1: one evaluation of the defaults, as the server
            return [_request(defaults, "", "action")], True
        return [
            parse_request({**defaults, **_obj(e, f"evaluations[{i}]")}, f"evaluations[{i}]")
            for i, e in enumerate(items)
        ], True
    if "actions" in obj:
        acts = obj["actions"]
        if not isinstance(acts, list) or not acts:
            raise RequestError("actions", "must be a non-empty list")
        return [
            _request({**defaults, "action": a}, "", f"actions[{i}]") for i, a in enumerate(acts)
        ], True
    return [_request(defaults, "", "action")], False


def _request(obj: Mapping[str, Any], where: str, action_at: str) -> Request:
    """`obj` has only known keys; `action_at` is where its action came from."""
    subject_at, resource_at = _join(where, "subject"), _join(where, "resource")
    return Request(
        subject=_subject(_part(obj, "subject", subject_at), subject_at),
        action=_action(_part(obj, "action", action_at), action_at),
        resource=_resource(_part(obj, "resource", resource_at), resource_at),
        context=_mapping(obj.get("context"), _join(where, "context")),
    )


def _known_keys(obj: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    """RequestError naming the first key that is not one of `allowed`, with the closest."""
    for key in obj:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise RequestError(where, f"unknown key `{key}`" + (f"; {hint}" if hint else ""))


def _part(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """The subject, action or resource: required, an object, with only its own keys."""
    if key not in obj:
        raise RequestError(where, "is required")
    value = obj[key]
    if not isinstance(value, Mapping):
        raise RequestError(where, "must be an object" + _object_form(key, value))
    _known_keys(value, _KEYS[key], where)
    return value


def _object_form(key: str, value: object) -> str:
    """How to write `value` (a name, `type:id` or `type/id` string) as the object."""
    if isinstance(value, str) and value:
        shape: dict[str, str] | None = None
        if key == "action":
            shape = {"name": value}
        elif key == "subject" and 0 < value.find(":") < len(value) - 1:
            kind, _, ident = value.partition(":")
            shape = {"type": kind, "id": ident}
        elif key == "resource" and is_scope_name(value):
            kind, _, ident = value.partition("/")
            shape = {"type": kind, "id": ident}
        if shape is not None:
            return f", not a string; write `{json.dumps(shape, ensure_ascii=False)}`"
    required = " and ".join(f"`{k}`" for k in _KEYS[key] if k in ("type", "id", "name"))
    return f" with {required}"


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


# The separators of `type:id` (subjects) and `type/id` (resources, scopes): in a type
# they would make two different entities one key, and one's bindings the other's.
SUBJECT_TYPE_RULE = "must not contain `:`, which separates type and id in `type:id`"
RESOURCE_TYPE_RULE = "must not contain `/`, which separates type and id in `type/id`"


def _subject(obj: Mapping[str, Any], where: str) -> Subject:
    type_ = _text(obj, "type", where)
    if ":" in type_:
        raise RequestError(f"{where}.type", SUBJECT_TYPE_RULE)
    return Subject(
        type_,
        _text(obj, "id", where),
        _mapping(obj.get("properties"), f"{where}.properties"),
    )


def _action(obj: Mapping[str, Any], where: str) -> Action:
    return Action(_text(obj, "name", where), _mapping(obj.get("properties"), f"{where}.properties"))


def _resource(obj: Mapping[str, Any], where: str) -> Resource:
    ancestors = obj.get("ancestors") or ()
    if not isinstance(ancestors, list | tuple) or not all(
        isinstance(a, str) and is_scope_name(a) for a in ancestors
    ):
        raise RequestError(f"{where}.ancestors", "must be a list of `type/id` strings")
    type_ = _text(obj, "type", where)
    if "/" in type_:
        raise RequestError(f"{where}.type", RESOURCE_TYPE_RULE)
    return Resource(
        type_,
        _text(obj, "id", where),
        _mapping(obj.get("properties"), f"{where}.properties"),
        tuple(ancestors),
    )
