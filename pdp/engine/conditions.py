"""Compile condition ASTs into Python closures, once, at policy load time.

Each closure takes an `Env` and returns a value or raises `EvalError`. Literals are
folded, literal lists become frozensets, and pure functions of literals are
computed ahead, so a request pays only for what depends on it.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Mapping
from typing import Any

from pdp.engine import functions
from pdp.engine.env import Condition, Env
from pdp.engine.errors import EvalError, a_type, type_error
from pdp.lang import ast


def compile_condition(expr: ast.Expr) -> Condition:
    """A closure computing `expr`; the caller checks that the result is a bool."""
    return _compile(expr)


_NEGATED = {"==": "!=", "!=": "=="}


def compile_rule_condition(when: ast.Expr | None, unless: ast.Expr | None) -> Condition | None:
    """`when C1 unless C2` as one closure returning True or False, or None if always true."""
    if when is None and unless is None:
        return None
    if when is None and isinstance(unless, ast.Compare) and unless.op in _NEGATED:
        # `unless a == b` is `a != b`: one closure instead of two (tenant isolation
        # reads like this and runs on every decision).
        return _compile(ast.Compare(_NEGATED[unless.op], unless.left, unless.right))
    w = _checked(when, "a `when` condition") if when is not None else None
    u = _checked(unless, "an `unless` condition") if unless is not None else None
    if u is None:
        assert w is not None
        return w
    if w is None:
        return lambda env: not u(env)
    return lambda env: w(env) and not u(env)


def _checked(expr: ast.Expr, what: str) -> Condition:
    """`expr` compiled to return True or False, or raise a type error."""
    f = _compile(expr)
    # Comparisons, `has`, `not`, `and`/`or` and boolean literals yield only True or
    # False (or raise), so the check would never fire: it is left out of the hot path.
    if isinstance(expr, ast.Compare | ast.Has | ast.Not | ast.BoolOp) or (
        isinstance(expr, ast.Literal) and isinstance(expr.value, bool)
    ):
        return f
    return _boolean(f, what, _source(expr))


def _source(e: ast.Expr) -> ast.Path | None:
    """The attribute a value comes from, to name in a type error (None: not a path)."""
    return e if isinstance(e, ast.Path) else None


def _boolean(f: Condition, what: str, source: ast.Path | None = None) -> Condition:
    def check(env: Env) -> bool:
        v = f(env)
        if v is True or v is False:
            return v
        raise type_error(f"{what} must be true or false", v, source)

    return check


_ATOMS = frozenset({str, int, float, bool, type(None)})


def strict_eq(a: object, b: object) -> bool:
    """Equality without Python's `True == 1`; numbers compare by value."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta in _ATOMS:
            # The usual case, two strings: no `isinstance` against the Mapping ABC.
            return a == b
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            return len(a) == len(b) and all(map(strict_eq, a, b))
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
        return a == b
    if ta is bool or tb is bool:
        return False
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(strict_eq, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    return False


class _Const:
    """Marks a compiled sub-expression whose value is known at compile time."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __call__(self, env: Env) -> object:
        return self.value


def _compile(e: ast.Expr) -> Condition:
    match e:
        case ast.Literal(value=v):
            return _Const(v)
        case ast.ListExpr(items=items):
            parts = [_compile(i) for i in items]
            if all(isinstance(p, _Const) for p in parts):
                return _Const([p.value for p in parts])  # type: ignore[attr-defined]
            return lambda env: [p(env) for p in parts]
        case ast.Path():
            return _path(e)
        case ast.Not(operand=op):
            return _not(_compile(op), _source(op))
        case ast.BoolOp(op=op, operands=operands):
            return _boolop(op, [_compile(o) for o in operands], [_source(o) for o in operands])
        case ast.Has(target=target, attr=attr):
            return _has(target, attr)
        case ast.Compare(op=op, left=left, right=right):
            return _compare(op, _compile(left), _compile(right))
        case ast.Call(name=name, args=args):
            return _call(name, [_compile(a) for a in args])
    raise AssertionError(f"unknown expression {e!r}")


def _not(f: Condition, source: ast.Path | None = None) -> Condition:
    if isinstance(f, _Const) and isinstance(f.value, bool):
        return _Const(not f.value)

    def not_(env: Env) -> bool:
        v = f(env)
        if v is True:
            return False
        if v is False:
            return True
        raise type_error("`not` needs a bool", v, source)

    return not_


def _boolop(op: str, parts: list[Condition], sources: list[ast.Path | None]) -> Condition:
    stop = op == "or"  # `or` stops at the first True, `and` at the first False
    what = f"`{op}` needs bools"

    if len(parts) == 2:
        a, b = parts

        def two(env: Env) -> bool:
            v = a(env)
            if v is stop:
                return stop
            if v is not (not stop):
                raise type_error(what, v, sources[0])
            w = b(env)
            if w is True or w is False:
                return w
            raise type_error(what, w, sources[1])

        return two

    def many(env: Env) -> bool:
        for p, source in zip(parts, sources, strict=True):
            v = p(env)
            if v is stop:
                return stop
            if v is not (not stop):
                raise type_error(what, v, source)
        return not stop

    return many


def _path(p: ast.Path) -> Condition:
    name = str(p)
    if not p.attrs:
        return _root_record(p.root)
    first, rest = p.attrs[0], p.attrs[1:]
    getter: Condition
    if p.root in ("subject", "resource") and first in ("id", "type"):
        # Spelled out rather than two `getattr`s: `subject.id` is in most conditions.
        getter = {
            ("subject", "id"): lambda env: env.subject.id,
            ("subject", "type"): lambda env: env.subject.type,
            ("resource", "id"): lambda env: env.resource.id,
            ("resource", "type"): lambda env: env.resource.type,
        }[(p.root, first)]
    elif p.root == "action" and first == "name":
        getter = lambda env: env.action.name  # noqa: E731
    else:
        getter = _attribute(p.root, first)
    if not rest:
        return getter
    return _nested(getter, p.root, (first, *rest), name)


def _attribute(root: str, name: str) -> Condition:
    """`root.name` from the properties (or the context); absent or null is missing.

    One closure per root, reading its `Env` slot directly: `getattr(env, slot)` with
    the slot's name cost a sixth of a condition.
    """
    missing = f"`{root}.{name}` is missing"

    def fail() -> EvalError:
        return EvalError("missing_attribute", missing)

    if root == "subject":

        def subject(env: Env) -> object:
            v = env.sprops.get(name)
            if v is None:
                raise fail()
            return v

        return subject
    if root == "resource":

        def resource(env: Env) -> object:
            v = env.rprops.get(name)
            if v is None:
                raise fail()
            return v

        return resource
    if root == "context":

        def context(env: Env) -> object:
            v = env.context.get(name)
            if v is None:
                raise fail()
            return v

        return context
    assert root == "action", root

    def action(env: Env) -> object:
        v = env.aprops.get(name)
        if v is None:
            raise fail()
        return v

    return action


def _nested(base: Condition, root: str, attrs: tuple[str, ...], name: str) -> Condition:
    def nested(env: Env) -> object:
        v = base(env)
        for i, attr in enumerate(attrs[1:], start=1):
            if not isinstance(v, Mapping):
                prefix = ".".join((root, *attrs[:i]))
                raise type_error(f"`{prefix}` has no attributes", v)
            v = v.get(attr)
            if v is None:
                raise EvalError(
                    "missing_attribute", f"`{'.'.join((root, *attrs[: i + 1]))}` is missing"
                )
        return v

    return nested


def _root_record(root: str) -> Condition:
    if root == "subject":
        return lambda env: {"id": env.subject.id, "type": env.subject.type, **env.sprops}
    if root == "resource":
        return lambda env: {"id": env.resource.id, "type": env.resource.type, **env.rprops}
    if root == "action":
        return lambda env: {"name": env.action.name, **env.aprops}
    return lambda env: env.context


def _has(target: ast.Expr, attr: str) -> Condition:
    # `subject has x` looks straight into the properties, without building a record.
    if isinstance(target, ast.Path) and not target.attrs:
        builtin = {"subject": ("id", "type"), "resource": ("id", "type"), "action": ("name",)}
        if attr in builtin.get(target.root, ()):
            return _Const(True)
        # One lambda per root, as in `_attribute`.
        if target.root == "subject":
            return lambda env: env.sprops.get(attr) is not None
        if target.root == "resource":
            return lambda env: env.rprops.get(attr) is not None
        if target.root == "context":
            return lambda env: env.context.get(attr) is not None
        return lambda env: env.aprops.get(attr) is not None
    f = _compile(target)

    def has(env: Env) -> bool:
        v = f(env)
        if not isinstance(v, Mapping):
            raise type_error("`has` needs a record", v)
        return v.get(attr) is not None

    return has


def _compare(op: str, left: Condition, right: Condition) -> Condition:
    if op in ("==", "!="):
        return _equality(op == "==", left, right)
    if op == "in":
        return _in(left, right)
    if op == "contains":
        return _contains(left, right)
    return _order(op, left, right)


def _kind(v: object) -> str:
    """What `==` and `in` compare values by: a string, a number (int or float), a bool,
    a list, a record, null. Values of different kinds are a type mismatch."""
    t = type(v)
    if t is str:
        return "string"
    if t is int or t is float:
        return "number"
    if t is bool:
        return "bool"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, Mapping):
        return "record"
    return t.__name__


def _mismatch(op: str, a: object, b: object) -> EvalError:
    # An error, not a silent false (DESIGN): `forbid ... when resource.level == 3` must
    # not let through a level of "3".
    return EvalError("type_error", f"`{op}` cannot compare {a_type(a)} with {a_type(b)}")


def _equality(positive: bool, left: Condition, right: Condition) -> Condition:
    op = "==" if positive else "!="
    lit_left = isinstance(left, _Const) and type(left.value) is str
    if lit_left or (isinstance(right, _Const) and type(right.value) is str):
        # A string literal on either side (`resource.kind == "doc"`): one type test.
        const, other = (left, right) if lit_left else (right, left)
        assert isinstance(const, _Const)
        text = const.value

        def eq_string(env: Env) -> bool:
            v = other(env)
            if type(v) is str:
                return (v == text) is positive
            raise _mismatch(op, text, v) if lit_left else _mismatch(op, v, text)

        return eq_string

    # Two strings, the usual case (`resource.owner == subject.id`), are compared here
    # without a call to `strict_eq`.
    def eq(env: Env) -> bool:
        a, b = left(env), right(env)
        if type(a) is str and type(b) is str:
            return (a == b) is positive
        if _kind(a) != _kind(b):
            raise _mismatch(op, a, b)
        return strict_eq(a, b) is positive

    return eq


def _in(left: Condition, right: Condition) -> Condition:
    if isinstance(right, _Const) and isinstance(right.value, list):
        items = right.value
        if items and all(type(i) is str for i in items):
            strings = frozenset(items)

            def in_strings(env: Env) -> bool:
                v = left(env)
                if type(v) is str:
                    return v in strings
                raise _not_among("in", v, items)

            return in_strings

        return lambda env: _member(left(env), items, "in")

    def in_(env: Env) -> bool:
        container = right(env)
        if not isinstance(container, list | tuple):
            raise type_error("`in` needs a list on its right", container)
        return _member(left(env), container, "in")

    return in_


def _member(v: object, items: list[Any] | tuple[Any, ...], op: str) -> bool:
    """Whether `v` is among `items`; a type error when none is of its kind (a string
    looked for among lists is a mistake, not an absence)."""
    if type(v) is str:
        # The usual case, an id among ids: `in` on the list itself, in C; a string
        # equals only a string, so no kind check is needed to find it.
        if v in items:
            return True
        if items and not any(type(i) is str for i in items):
            raise _not_among(op, v, items)
        return False
    kind = _kind(v)
    comparable = False
    for i in items:
        if _kind(i) == kind:
            comparable = True
            if strict_eq(v, i):
                return True
    if items and not comparable:
        raise _not_among(op, v, items)
    return False


def _not_among(op: str, v: object, items: list[Any] | tuple[Any, ...]) -> EvalError:
    kinds = ", ".join(sorted({_kind(i) for i in items}))
    return EvalError(
        "type_error", f"`{op}` cannot look for {a_type(v)} among items of kind {kinds}"
    )


def _contains(left: Condition, right: Condition) -> Condition:
    def contains(env: Env) -> bool:
        container = left(env)
        item = right(env)
        if isinstance(container, list | tuple):
            return _member(item, container, "contains")
        if isinstance(container, str):
            if not isinstance(item, str):
                raise type_error("a string can only contain a string", item)
            return item in container
        raise type_error("`contains` needs a list or string on its left", container)

    return contains


def _order(op: str, left: Condition, right: Condition) -> Condition:
    compare: Callable[[Any, Any], object] = {
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }[op]

    def order(env: Env) -> bool:
        a, b = left(env), right(env)
        ta, tb = type(a), type(b)
        if (
            ta is bool
            or tb is bool
            or not ((ta in (int, float) and tb in (int, float)) or ta is tb and ta is not list)
        ):
            raise EvalError("type_error", f"`{op}` cannot compare {a_type(a)} with {a_type(b)}")
        if a != a or b != b:  # NaN: every comparison with it is false, a forbid too
            raise EvalError("type_error", f"`{op}` cannot compare NaN, which is not a number")
        try:
            return bool(compare(a, b))
        except TypeError:
            raise EvalError(
                "type_error", f"`{op}` cannot compare {a_type(a)} with {a_type(b)}"
            ) from None

    return order


def _call(name: str, args: list[Condition]) -> Condition:
    if name == "now":
        return lambda env: env.now
    impl = functions.FUNCTIONS[name]
    if name == "in_cidr" and isinstance(args[1], _Const) and isinstance(args[1].value, str):
        # The network of a literal CIDR is parsed once, here.
        net: ipaddress.IPv4Network | ipaddress.IPv6Network = functions.network(args[1].value)
        ip = args[0]
        return lambda env: functions.in_cidr(ip(env), net)
    if all(isinstance(a, _Const) for a in args):
        try:
            return _Const(impl(*(a.value for a in args)))  # type: ignore[attr-defined]
        except EvalError:
            pass  # left to fail per request, with the rule's diagnostic
    if len(args) == 1:
        (a,) = args
        return lambda env: impl(a(env))
    if len(args) == 2:
        a, b = args
        return lambda env: impl(a(env), b(env))
    return lambda env: impl(*(a(env) for a in args))
