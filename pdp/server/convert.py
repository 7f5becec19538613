"""Protobuf messages → engine requests, once per call, enforcing the limits on the way.

Two kinds of problems, answered differently:

- `LimitError`: the call as a whole is over a limit or malformed; the caller gets
  INVALID_ARGUMENT naming the field, e.g.
  `evaluations[3].resource.properties.tags[2]: string longer than 4096 characters`.
- `InputError`: one evaluation cannot be decided (a required field is empty); that
  evaluation is a deny with an `invalid_request` diagnostic, the others are answered.

The conversion walks each `Struct` once, checking depth and string lengths as it goes;
sizes are taken from the encoded message (`ByteSize`, computed natively). Field paths
are built only when something is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import struct_pb2

from pdp.engine.request import (
    RESOURCE_TYPE_RULE,
    SUBJECT_TYPE_RULE,
    Action,
    Resource,
    Subject,
    is_scope_name,
)
from pdp.server.config import Limits
from pdp.v1 import decision_pb2 as pb

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Integral numbers up to 2**53 are exact in a double: give them back as ints, so that
# `resource.level == 3` and a stored integer attribute compare the way people expect.
_MAX_EXACT = float(2**53)


class LimitError(ValueError):
    """The call is over a limit or malformed: INVALID_ARGUMENT, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class InputError(ValueError):
    """One evaluation cannot be decided; it becomes a deny with a diagnostic.

    `entity`: the (type, id) of the subject or resource at fault, when those were
    valid (a bad ancestor): the audit record still names what was asked about.
    """

    def __init__(self, field: str, message: str, entity: tuple[str, str] | None = None) -> None:
        self.field = field
        self.message = message
        self.entity = entity
        super().__init__(f"`{field}` {message}")


class _Bad(Exception):
    """Raised deep in a Struct; each level adds its path segment while unwinding."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []


def _segment(key: str) -> str:
    return f".{key}" if _IDENT.match(key) else f"[{key!r}]"


class Converter:
    """Converts messages of one call under `limits`; cheap to create.

    `small`: for messages no larger than `limits.max_attributes_bytes` in all, whose
    attributes cannot be over that limit either, so their size is not computed.
    """

    __slots__ = ("_depth", "_max_str", "_max_bytes", "_max_ancestors")

    def __init__(self, limits: Limits, *, small: bool = False) -> None:
        self._depth = limits.max_depth
        self._max_str = limits.max_string_length
        self._max_bytes: int | None = None if small else limits.max_attributes_bytes
        self._max_ancestors = limits.max_ancestors

    # --- attributes -------------------------------------------------------------------

    def struct(self, msg: struct_pb2.Struct, where: str) -> Mapping[str, Any]:
        """A `Struct` as a plain dict; LimitError naming the path when over a limit."""
        if not msg.fields:
            return _EMPTY
        if self._max_bytes is not None:
            size = msg.ByteSize()
            if size > self._max_bytes:
                raise LimitError(where, f"{size} bytes encoded, more than {self._max_bytes}")
        try:
            return self._fields(msg, 1)
        except _Bad as bad:
            raise LimitError(where + "".join(reversed(bad.path)), bad.message) from None

    def _fields(self, msg: struct_pb2.Struct, depth: int) -> dict[str, Any]:
        if depth > self._depth:
            raise _Bad(f"nested deeper than {self._depth} levels")
        out: dict[str, Any] = {}
        max_str = self._max_str
        fields = msg.fields
        # Keys, then a lookup each: the map's `items()` is a pure-Python view (a
        # generator per call); iterating the keys is native. Strings and booleans, the
        # common values, are read here rather than through `_value` (a call each).
        for key in fields:
            if len(key) > max_str:
                bad = _Bad(f"key longer than {max_str} characters")
                bad.path.append(_segment(key[:20] + "..."))
                raise bad
            value = fields[key]
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                s = value.string_value
                if len(s) <= max_str:
                    out[key] = s
                    continue
            elif kind == "bool_value":
                out[key] = value.bool_value
                continue
            try:
                out[key] = self._value(value, depth)
            except _Bad as bad:
                bad.path.append(_segment(key))
                raise
        return out

    def _value(self, value: struct_pb2.Value, depth: int) -> Any:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            s = value.string_value
            if len(s) > self._max_str:
                raise _Bad(f"string longer than {self._max_str} characters")
            return s
        if kind == "number_value":
            n = value.number_value
            if not math.isfinite(n):
                raise _Bad("number is not finite")
            return int(n) if n.is_integer() and -_MAX_EXACT <= n <= _MAX_EXACT else n
        if kind == "bool_value":
            return value.bool_value
        if kind == "struct_value":
            return self._fields(value.struct_value, depth + 1)
        if kind == "list_value":
            if depth + 1 > self._depth:
                raise _Bad(f"nested deeper than {self._depth} levels")
            items = []
            for i, item in enumerate(value.list_value.values):
                try:
                    items.append(self._value(item, depth + 1))
                except _Bad as bad:
                    bad.path.append(f"[{i}]")
                    raise
            return items
        # null_value, or a Value with nothing set: both mean "no value".
        return None

    # --- entities -----------------------------------------------------------------------

    def _limit(self, value: str, where: str) -> None:
        if len(value) > self._max_str:
            raise LimitError(where, f"string longer than {self._max_str} characters")

    def subject(self, msg: pb.Subject, where: str) -> Subject:
        """The subject; limits are checked on every field before any InputError."""
        props = self.struct(msg.properties, where + ".properties")
        type_, id_ = msg.type, msg.id
        max_str = self._max_str
        # The usual case, all fields fine, in one test; otherwise the checks one by one,
        # in the documented order (limits first), for the error to name.
        if type_ and id_ and len(type_) <= max_str and len(id_) <= max_str and ":" not in type_:
            return Subject(type_, id_, props)
        self._limit(type_, where + ".type")
        self._limit(id_, where + ".id")
        _required(type_, where + ".type")
        _required(id_, where + ".id")
        raise InputError(where + ".type", SUBJECT_TYPE_RULE)

    def action(self, msg: pb.Action, where: str) -> Action:
        props = self.struct(msg.properties, where + ".properties")
        name = msg.name
        if name and len(name) <= self._max_str:
            return Action(name, props)
        self._limit(name, where + ".name")
        _required(name, where + ".name")
        return Action(name, props)

    def resource(self, msg: pb.Resource, where: str) -> Resource:
        props = self.struct(msg.properties, where + ".properties")
        type_, id_ = msg.type, msg.id
        max_str = self._max_str
        ancestors: tuple[str, ...] = tuple(msg.ancestors)
        if (
            type_
            and id_
            and len(type_) <= max_str
            and len(id_) <= max_str
            and len(ancestors) <= self._max_ancestors
            and "/" not in type_
        ):
            for a in ancestors:
                # is_scope_name, written out: one call fewer per ancestor on every check.
                if len(a) > max_str or not 0 < a.find("/") < len(a) - 1:
                    break
            else:
                return Resource(type_, id_, props, ancestors)
        # Something is wrong: the checks in order (limits first), for the error to name.
        self._limit(type_, where + ".type")
        self._limit(id_, where + ".id")
        if ancestors:
            if len(ancestors) > self._max_ancestors:
                raise LimitError(where + ".ancestors", f"more than {self._max_ancestors} entries")
            for i, a in enumerate(ancestors):
                self._limit(a, f"{where}.ancestors[{i}]")
        _required(type_, where + ".type")
        _required(id_, where + ".id")
        if "/" in type_:
            raise InputError(where + ".type", RESOURCE_TYPE_RULE)
        for i, a in enumerate(ancestors):
            if not is_scope_name(a):
                raise InputError(
                    f"{where}.ancestors[{i}]", "must be `type/id`, e.g. `folder/7`", (type_, id_)
                )
        return Resource(type_, id_, props, ancestors)


def _required(value: str, where: str) -> None:
    if not value:
        raise InputError(where, "is required")
