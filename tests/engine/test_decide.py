"""decide(): default deny, forbid overrides permit, errors, roles, every operator and function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pdp.engine.compile import compile_policy_set
from pdp.engine.decide import NO_ROLE, decide, decide_actions
from pdp.engine.decision import Decision, Diagnostic, RuleTrace
from pdp.engine.request import Request
from pdp.lang.load import load_texts
from tests.helpers import NOW, allowed, check, compile_files, compile_text, request

DOCS = """\
role viewer
role editor : viewer
role admin  : editor

derived role owner on document when resource.owner == subject.id

resource document {
  actions read, update, delete, share

  @id("viewer-read") permit viewer to read
  @id("editor-update") permit editor to update unless resource has archived and resource.archived
  @id("owner-all") permit owner to read, update, delete
  @id("admin-all") permit admin to *
  @id("public-read") permit any to read when resource has public and resource.public

  @id("locked") forbid any to update, delete when resource has locked and resource.locked
}
"""


@pytest.fixture(scope="module")
def docs() -> Any:
    return compile_text(DOCS)


# --- the decision rules ------------------------------------------------------------


def test_default_deny(docs: Any) -> None:
    d = check(docs, request("read", resource={"owner": "carol"}))
    assert d == Decision("read", False, (), (), docs.version)


def test_a_permit_allows_and_is_the_reason(docs: Any) -> None:
    d = check(docs, request("read", resource={"owner": "carol"}), {"viewer"})
    assert (d.allowed, d.reasons, d.diagnostics, d.roles_used) == (
        True,
        ("viewer-read",),
        (),
        ("viewer",),
    )


def test_forbid_overrides_permit(docs: Any) -> None:
    d = check(docs, request("update", resource={"locked": True}), {"admin"})
    assert (d.allowed, d.reasons, d.diagnostics) == (False, ("locked",), ())


def test_reasons_list_every_applicable_permit(docs: Any) -> None:
    req = request("read", subject_id="bob", resource={"owner": "bob", "public": True})
    d = check(docs, req, {"admin"})
    assert d.allowed
    assert d.reasons == ("admin-all", "owner-all", "public-read", "viewer-read")
    assert d.roles_used == ("admin", "owner")


def test_reasons_list_every_applicable_forbid() -> None:
    policy = compile_text(
        "resource document {\n  actions read\n"
        '  @id("b") forbid any to read\n'
        '  @id("a") forbid any to *\n'
        '  @id("p") permit any to read\n'
        "}\n"
    )
    assert check(policy, request()).reasons == ("a", "b")


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (set(), set()),
        ({"viewer"}, {"read"}),
        ({"editor"}, {"read", "update"}),
        ({"admin"}, {"read", "update", "delete", "share"}),
        ({"viewer", "editor"}, {"read", "update"}),
        ({"ghost"}, set()),  # a role the policies never declared
    ],
)
def test_role_inclusion(docs: Any, roles: set[str], expected: set[str]) -> None:
    got = {a for a in ("read", "update", "delete", "share") if allowed(docs, request(a), roles)}
    assert got == expected


def test_inclusion_is_transitive_and_diamonds_work() -> None:
    policy = compile_text(
        "role base\nrole left : base\nrole right : base\nrole top : left, right\n"
        "role other\n"
        "resource document {\n  actions read\n  permit base to read\n}\n"
    )
    for role in ("base", "left", "right", "top"):
        assert allowed(policy, request(), {role}), role
    assert not allowed(policy, request(), {"other"})


def test_any_applies_to_everyone(docs: Any) -> None:
    req = request("read", subject_type="service", subject_id="x", resource={"public": True})
    d = check(docs, req)
    assert (d.allowed, d.reasons, d.roles_used) == (True, ("public-read",), ())


def test_star_covers_every_declared_action(docs: Any) -> None:
    assert check(docs, request("share"), {"admin"}).reasons == ("admin-all",)


def test_when_and_unless(docs: Any) -> None:
    assert allowed(docs, request("update"), {"editor"})
    assert allowed(docs, request("update", resource={"archived": False}), {"editor"})
    assert not allowed(docs, request("update", resource={"archived": True}), {"editor"})


def test_when_and_unless_together() -> None:
    policy = compile_text(
        "resource document {\n  actions read\n"
        "  permit any to read when resource.a unless resource.b\n}\n"
    )
    for a, b, want in [
        (True, False, True),
        (True, True, False),
        (False, False, False),
        (False, True, False),
    ]:
        assert allowed(policy, request(resource={"a": a, "b": b})) is want


# --- derived roles -----------------------------------------------------------------


def test_derived_role(docs: Any) -> None:
    mine = request("delete", subject_id="bob", resource={"owner": "bob"})
    theirs = request("delete", subject_id="eve", resource={"owner": "bob"})
    assert check(docs, mine) == Decision(
        "delete", True, ("owner-all",), (), docs.version, ("owner",)
    )
    assert not allowed(docs, theirs)


def test_derived_role_is_not_evaluated_when_a_held_role_matches() -> None:
    policy = compile_text(
        "role editor\n"
        "derived role owner on document when resource.owner == subject.id\n"
        'resource document {\n  actions read\n  @id("p") permit editor, owner to read\n}\n'
    )
    # `resource.owner` is missing: evaluating `owner` would give a diagnostic
    d = check(policy, request(), {"editor"})
    assert (d.allowed, d.reasons, d.diagnostics, d.roles_used) == (True, ("p",), (), ("editor",))


def test_derived_role_that_errors_makes_its_permit_not_apply() -> None:
    policy = compile_text(
        "derived role owner on document when resource.owner == subject.id\n"
        'resource document {\n  actions read\n  @id("p") permit owner to read\n}\n'
    )
    d = check(policy, request())
    assert not d.allowed
    assert d.diagnostics == (
        Diagnostic("missing_attribute", "derived role `owner`: `resource.owner` is missing", "p"),
    )


def test_derived_role_that_errors_makes_its_forbid_deny() -> None:
    policy = compile_text(
        "derived role stranger on document when resource.owner != subject.id\n"
        "resource document {\n  actions read\n"
        '  @id("f") forbid stranger to read\n'
        '  @id("p") permit any to read\n'
        "}\n"
    )
    assert allowed(policy, request(resource={"owner": "alice"}))
    assert not allowed(policy, request(resource={"owner": "bob"}))
    d = check(policy, request())
    assert (d.allowed, d.reasons) == (False, ("f",))
    assert [x.code for x in d.diagnostics] == ["missing_attribute"]


def test_derived_role_is_per_resource_type() -> None:
    policy = compile_text(
        "derived role owner on document when resource.owner == subject.id\n"
        "derived role owner on folder when resource.creator == subject.id\n"
        "resource document {\n  actions read\n  permit owner to read\n}\n"
        "resource folder {\n  actions read\n  permit owner to read\n}\n"
    )
    assert allowed(policy, request(resource={"owner": "alice"}))
    assert allowed(policy, request(resource_type="folder", resource={"creator": "alice"}))
    assert not allowed(policy, request(resource_type="folder", resource={"owner": "alice"}))


def test_a_binding_for_a_derived_role_name_grants_nothing() -> None:
    policy = compile_text(
        "derived role owner on document when false\n"
        "resource document {\n  actions read\n  permit owner to read\n}\n"
    )
    assert not allowed(policy, request(), {"owner"})


def test_derived_role_must_be_a_bool_at_runtime() -> None:
    policy = compile_text(
        "derived role flagged on document when resource.flag\n"
        'resource document {\n  actions read\n  @id("p") permit flagged to read\n}\n'
    )
    d = check(policy, request(resource={"flag": "yes"}))
    assert not d.allowed
    assert d.diagnostics == (
        Diagnostic(
            "type_error",
            "derived role `flagged`: derived role `flagged` must be true or false, got a string",
            "p",
        ),
    )


# --- errors ------------------------------------------------------------------------

ERRORS = """\
resource document {
  actions read, update
  @id("permit-errs")
  permit any to read when resource.level > 3
  @id("permit-ok")
  permit any to update
  @id("forbid-errs")
  forbid any to update when resource.locked
}
"""


def test_an_erroring_permit_does_not_apply() -> None:
    policy = compile_text(ERRORS)
    d = check(policy, request("read"))
    assert (d.allowed, d.reasons) == (False, ())
    assert d.diagnostics == (
        Diagnostic("missing_attribute", "`resource.level` is missing", "permit-errs"),
    )


def test_an_erroring_forbid_denies() -> None:
    policy = compile_text(ERRORS)
    d = check(policy, request("update"))
    assert (d.allowed, d.reasons) == (False, ("forbid-errs",))
    assert d.diagnostics == (
        Diagnostic("missing_attribute", "`resource.locked` is missing", "forbid-errs"),
    )
    assert allowed(policy, request("update", resource={"locked": False}))


def test_a_null_attribute_is_missing() -> None:
    policy = compile_text(ERRORS)
    d = check(policy, request("read", resource={"level": None}))
    assert [x.code for x in d.diagnostics] == ["missing_attribute"]


def test_unknown_resource_type() -> None:
    policy = compile_text(ERRORS)
    d = check(policy, request("read", resource_type="invoice"))
    assert d == Decision(
        "read",
        False,
        (),
        (Diagnostic("unknown_resource_type", "resource type `invoice` is not declared"),),
        policy.version,
    )


def test_unknown_action() -> None:
    policy = compile_text(ERRORS)
    d = check(policy, request("share"))
    assert d == Decision(
        "share",
        False,
        (),
        (
            Diagnostic(
                "unknown_action", "action `share` is not declared on resource type `document`"
            ),
        ),
        policy.version,
    )


def test_declared_action_without_rules_is_a_plain_default_deny() -> None:
    policy = compile_text("resource document {\n  actions read, archive\n}\n")
    assert check(policy, request("archive")) == Decision("archive", False, (), (), policy.version)


# --- multi-action ------------------------------------------------------------------


def together(policy: Any, reqs: list[Request], roles: frozenset[str] = frozenset()) -> Any:
    """The batch path: every request's action, on the first one's subject and resource."""
    r = reqs[0]
    actions = [x.action for x in reqs]
    return decide_actions(policy, r.subject, r.resource, r.context, r.now, actions, roles)


def test_decide_actions(docs: Any) -> None:
    actions = ("read", "update", "delete", "share")
    reqs = [request(a, subject_id="bob", resource={"owner": "bob"}) for a in actions]
    got = together(docs, reqs, frozenset({"viewer"}))
    assert [(d.action, d.allowed, d.reasons) for d in got] == [
        ("read", True, ("owner-all", "viewer-read")),
        ("update", True, ("owner-all",)),
        ("delete", True, ("owner-all",)),
        ("share", False, ()),
    ]
    assert got == [decide(docs, r, frozenset({"viewer"})) for r in reqs]
    r = reqs[0]
    assert decide_actions(docs, r.subject, r.resource, r.context, r.now, []) == []


def test_decide_actions_agrees_with_decide_when_derived_roles_read_the_action() -> None:
    policy = compile_text(
        'derived role reader on document when action.name == "read"\n'
        "resource document {\n  actions read, update\n  permit reader to read, update\n}\n"
    )
    reqs = [request("read"), request("update")]
    assert [d.allowed for d in together(policy, reqs)] == [decide(policy, r).allowed for r in reqs]


def test_the_order_of_a_rules_derived_roles_never_matters() -> None:
    # `owner` cannot be evaluated here (no owner attribute), `reviewer` holds: either
    # way round, the rule considers the subject; the error counts only when none holds.
    policy = compile_text(
        "derived role owner on document when resource.owner == subject.id\n"
        'derived role reviewer on document when subject.team == "review"\n'
        "resource document {\n  actions read, update\n"
        "  permit owner, reviewer to read\n  permit reviewer, owner to update\n}\n"
    )
    subject = {"team": "review"}
    for action in ("read", "update"):
        d = decide(policy, request(action, subject=subject))
        assert d.allowed and not d.diagnostics, (action, d)
        assert decide(policy, request(action, subject=subject), explain=True).allowed
    d = decide(policy, request("read", subject={"team": "other"}))
    assert not d.allowed and d.diagnostics[0].code == "missing_attribute"


# --- values and operators ----------------------------------------------------------


def when(expr: str, **kwargs: Any) -> Decision:
    policy = compile_text(
        f'resource document {{\n  actions read\n  @id("r") permit any to read when {expr}\n}}\n'
    )
    return check(policy, request(**kwargs))


def holds(expr: str, **props: Any) -> bool:
    d = when(expr, resource=props)
    assert d.diagnostics == (), d.diagnostics
    return d.allowed


def error_of(expr: str, **props: Any) -> tuple[str, str]:
    d = when(expr, resource=props)
    assert not d.allowed
    (diag,) = d.diagnostics
    assert diag.rule_id == "r"
    return diag.code, diag.message


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1, True),
        (1, 1.0, True),
        (0, 0.0, True),
        (1, True, "`==` cannot compare an int with a bool"),  # a mismatch is an error
        (0, False, "`==` cannot compare an int with a bool"),
        (True, True, True),
        ("1", 1, "`==` cannot compare a string with an int"),
        ("a", "a", True),
        ("a", "A", False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1], [1.0], True),
        ([1], [True], False),  # lists of different items are just not equal
        ({"k": 1}, {"k": 1}, True),
        (None, None, None),  # missing: an error, not a value
    ],
)
def test_strict_equality(a: object, b: object, equal: bool | str | None) -> None:
    if equal is None:
        assert error_of("resource.a == resource.b", a=a, b=b)[0] == "missing_attribute"
        return
    if isinstance(equal, str):
        assert error_of("resource.a == resource.b", a=a, b=b) == ("type_error", equal)
        assert error_of("resource.a != resource.b", a=a, b=b)[0] == "type_error"
        return
    assert holds("resource.a == resource.b", a=a, b=b) is equal
    assert holds("resource.a != resource.b", a=a, b=b) is not equal


def test_equality_with_literals() -> None:
    assert holds("resource.a == 1", a=1.0)
    assert error_of("resource.a == true", a=1) == (
        "type_error",
        "`==` cannot compare an int with a bool",
    )
    assert error_of("resource.a == 1", a=True)[0] == "type_error"
    assert holds('resource.a == "x"', a="x")
    assert error_of('resource.a == "1"', a=1) == (
        "type_error",
        "`==` cannot compare an int with a string",
    )
    assert error_of('resource.a != "1"', a=1)[0] == "type_error"
    assert holds("resource.a == [1, 2]", a=[1.0, 2])
    assert holds("1 == 1.0")


@pytest.mark.parametrize(
    ("expr", "props", "want"),
    [
        ('resource.a in ["x", "y"]', {"a": "x"}, True),
        ('resource.a in ["x", "y"]', {"a": "z"}, False),
        ("resource.a in [1, 2]", {"a": 2.0}, True),
        ("resource.a in []", {"a": 1}, False),
        ("resource.a in resource.b", {"a": "x", "b": ["x"]}, True),
        ("resource.a in [resource.b, 3]", {"a": 3, "b": 0}, True),
        ("resource.a contains 1", {"a": [1, 2]}, True),
        ('resource.a in [1, "x"]', {"a": "y"}, False),  # compared with its own kind
        ('resource.a contains "ell"', {"a": "hello"}, True),
        ('resource.a contains "x"', {"a": "hello"}, False),
        ('resource.a contains ""', {"a": ""}, True),
        ("resource has a", {"a": 0}, True),
        ("resource has a", {"a": False}, True),
        ("resource has a", {"a": None}, False),
        ("resource has b", {"a": 1}, False),
        ("resource.a has b", {"a": {"b": 1}}, True),
        ("resource.a has c", {"a": {"b": 1}}, False),
        ("resource.a.b.c == 1", {"a": {"b": {"c": 1}}}, True),
        ("subject has id and resource has type", {}, True),
        ("resource.a < resource.b", {"a": 1, "b": 1.5}, True),
        ("resource.a <= resource.b", {"a": 2, "b": 2.0}, True),
        ("resource.a > resource.b", {"a": "b", "b": "a"}, True),
        ("resource.a >= resource.b", {"a": "a", "b": "b"}, False),
        ("not resource.a", {"a": False}, True),
        ("resource.a and resource.b", {"a": True, "b": False}, False),
        ("resource.a or resource.b", {"a": False, "b": True}, True),
        ("resource.a and resource.b and resource.c", {"a": True, "b": True, "c": True}, True),
        ("resource.a or resource.b or resource.c", {"a": False, "b": False, "c": False}, False),
    ],
)
def test_operators(expr: str, props: dict[str, Any], want: bool) -> None:
    assert holds(expr, **props) is want


@pytest.mark.parametrize(
    ("expr", "props", "message"),
    [
        ('resource.a in ["1"]', {"a": 1}, "`in` cannot look for an int among items of kind string"),
        (
            "resource.a in [1, 2]",
            {"a": True},
            "`in` cannot look for a bool among items of kind number",
        ),
        ("resource.a in [true]", {"a": 1}, "`in` cannot look for an int among items of kind bool"),
        ("resource.a in resource.b", {"a": "u", "b": [["u"]]}, "among items of kind list"),
        ("resource.a contains 1", {"a": [True]}, "`contains` cannot look for an int among items"),
        ("resource.a < 3", {"a": float("nan")}, "`<` cannot compare NaN, which is not a number"),
        ("resource.a >= 3", {"a": float("nan")}, "`>=` cannot compare NaN"),
        ("resource.a < now()", {"a": 1}, "`<` cannot compare an int with a time"),
    ],
)
def test_a_mismatch_is_an_error_not_a_false(expr: str, props: dict[str, Any], message: str) -> None:
    # In a forbid, a silent false would let the request through (DESIGN: fail closed).
    code, got = error_of(expr, **props)
    assert code == "type_error" and message in got


def test_and_or_short_circuit_left_to_right() -> None:
    # the guard keeps the missing attribute from being read
    assert not holds("resource has x and resource.x", a=1)
    assert holds("not (resource has x) or resource.x", a=1)
    assert holds("true or resource.missing")
    assert not holds("false and resource.missing")
    assert error_of("resource.missing or true")[0] == "missing_attribute"


@pytest.mark.parametrize(
    ("expr", "props", "code", "message"),
    [
        (
            "resource.flag",
            {"flag": 1},
            "type_error",
            "a `when` condition must be true or false, got an int from `resource.flag`",
        ),
        (
            "resource.a and true",
            {"a": 1},
            "type_error",
            "`and` needs bools, got an int from `resource.a`",
        ),
        (
            "resource.a or true",
            {"a": "x"},
            "type_error",
            "`or` needs bools, got a string from `resource.a`",
        ),
        (
            "not resource.a",
            {"a": []},
            "type_error",
            "`not` needs a bool, got a list from `resource.a`",
        ),
        ("resource.a < 1", {"a": "x"}, "type_error", "`<` cannot compare a string with an int"),
        (
            "resource.a < resource.b",
            {"a": [1], "b": [2]},
            "type_error",
            "`<` cannot compare a list with a list",
        ),
        (
            "resource.a >= resource.b",
            {"a": True, "b": False},
            "type_error",
            "`>=` cannot compare a bool with a bool",
        ),
        (
            "resource.a in resource.b",
            {"a": 1, "b": "abc"},
            "type_error",
            "`in` needs a list on its right, got a string",
        ),
        (
            "resource.a contains 1",
            {"a": 5},
            "type_error",
            "`contains` needs a list or string on its left, got an int",
        ),
        (
            "resource.a contains 1",
            {"a": "abc"},
            "type_error",
            "a string can only contain a string, got an int",
        ),
        (
            "resource.a.b == 1",
            {"a": 5},
            "type_error",
            "`resource.a` has no attributes, got an int",
        ),
        ("resource.a.b == 1", {"a": {}}, "missing_attribute", "`resource.a.b` is missing"),
        ("resource.a has b", {"a": 5}, "type_error", "`has` needs a record, got an int"),
        ("resource.x == 1", {}, "missing_attribute", "`resource.x` is missing"),
        ("subject.x == 1", {}, "missing_attribute", "`subject.x` is missing"),
        ("context.x == 1", {}, "missing_attribute", "`context.x` is missing"),
        ("action.x == 1", {}, "missing_attribute", "`action.x` is missing"),
    ],
)
def test_runtime_errors(expr: str, props: dict[str, Any], code: str, message: str) -> None:
    assert error_of(expr, **props) == (code, message)


def test_unless_that_is_not_a_bool() -> None:
    policy = compile_text(
        "resource document {\n  actions read\n"
        "  permit any to read unless 1 == resource.a or resource.b\n}\n"
    )
    d = check(policy, request(resource={"a": 2, "b": "no"}))
    assert [x.message for x in d.diagnostics] == [
        "`or` needs bools, got a string from `resource.b`"
    ]


def test_builtin_attributes_and_action_properties() -> None:
    d = when(
        'subject.id == "alice" and subject.type == "user" and resource.id == "7" '
        'and resource.type == "document" and action.name == "read" and action.mfa',
        resource_id="7",
        action_props={"mfa": True},
    )
    assert d.allowed and d.diagnostics == ()


def test_subject_and_context_properties() -> None:
    d = when(
        "subject.level >= 3 and context.ip == subject.home",
        subject={"level": 3, "home": "1.2.3.4"},
        context={"ip": "1.2.3.4"},
    )
    assert d.allowed


def test_whole_records() -> None:
    assert when("subject has level", subject={"level": 1}).allowed
    assert when("context has ip", context={"ip": "x"}).allowed
    assert not when("context has ip").allowed
    assert when("size(context) == 2", context={"a": 1, "b": 2}).allowed
    assert when("size(resource) == 3", resource={"x": 1}).allowed  # id, type and x


# --- functions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "props", "want"),
    [
        ('startswith(resource.s, "ab")', {"s": "abc"}, True),
        ('startswith(resource.s, "bc")', {"s": "abc"}, False),
        ('endswith(resource.s, "bc")', {"s": "abc"}, True),
        ('lower(resource.s) == "abc"', {"s": "AbC"}, True),
        ('upper(resource.s) == "ÉTÉ"', {"s": "été"}, True),
        ("size(resource.s) == 3", {"s": "abc"}, True),
        ("size(resource.s) == 2", {"s": [1, [2, 3]]}, True),
        ("size(resource.s) == 1", {"s": {"k": 1}}, True),
        ('size("") == 0', {}, True),
        ('in_cidr(resource.ip, "10.0.0.0/8")', {"ip": "10.1.2.3"}, True),
        ('in_cidr(resource.ip, "10.0.0.0/8")', {"ip": "11.1.2.3"}, False),
        ('in_cidr(resource.ip, "10.0.0.1")', {"ip": "10.0.0.1"}, True),
        ('in_cidr(resource.ip, "10.0.0.5/8")', {"ip": "10.9.9.9"}, True),  # host bits allowed
        ('in_cidr(resource.ip, "2001:db8::/32")', {"ip": "2001:db8::1"}, True),
        ('in_cidr(resource.ip, "2001:db8::/32")', {"ip": "2001:db9::1"}, False),
        ('in_cidr(resource.ip, "2001:db8::/32")', {"ip": "10.0.0.1"}, False),
        ('in_cidr(resource.ip, "10.0.0.0/8")', {"ip": "::1"}, False),
        # an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client)
        ('in_cidr(resource.ip, "10.0.0.0/8")', {"ip": "::ffff:10.0.0.1"}, True),
        ('in_cidr(resource.ip, "10.0.0.0/8")', {"ip": "::ffff:11.0.0.1"}, False),
        ('in_cidr(resource.ip, "10.0.0.1")', {"ip": "::ffff:10.0.0.1"}, True),
        ('in_cidr(resource.ip, "::ffff:10.0.0.0/104")', {"ip": "::ffff:10.0.0.1"}, True),
        (
            "in_cidr(resource.ip, resource.net)",
            {"ip": "192.168.1.9", "net": "192.168.1.0/24"},
            True,
        ),
        ("is_ip(resource.s)", {"s": "127.0.0.1"}, True),
        ("is_ip(resource.s)", {"s": "fe80::1"}, True),
        ("is_ip(resource.s)", {"s": "localhost"}, False),
        ("is_ip(resource.s)", {"s": "10.0.0.0/8"}, False),
        ('time(resource.t) < time("2026-01-01T00:00:01Z")', {"t": "2026-01-01T00:00:00Z"}, True),
        ('time(resource.t) == time("2026-01-01T01:00:00+01:00")', {"t": "2026-01-01"}, True),
        ("time(resource.t) < now()", {"t": "2026-11-26T11:59:59Z"}, True),
        ("time(resource.t) > now()", {"t": "2026-11-26T12:00:01"}, True),
        ("hour(now()) == 12", {}, True),
        ("weekday(now()) == 4", {}, True),
        ('weekday(time("2026-11-23")) == 1', {}, True),
        ('days_between(time("2026-11-25T00:00:00Z"), now()) == 1.5', {}, True),
        ('days_between(now(), time("2026-11-25T12:00:00Z")) == -1', {}, True),
    ],
)
def test_functions(expr: str, props: dict[str, Any], want: bool) -> None:
    assert holds(expr, **props) is want


@pytest.mark.parametrize(
    ("expr", "props", "code", "message"),
    [
        (
            "size(resource.a) == 1",
            {"a": 5},
            "type_error",
            "`size` needs a string, list or record, got an int",
        ),
        (
            'startswith(resource.a, "x")',
            {"a": 5},
            "type_error",
            "`startswith` needs a string, got an int",
        ),
        ("is_ip(resource.a)", {"a": 5}, "type_error", "`is_ip` needs a string, got an int"),
        (
            'in_cidr(resource.a, "10.0.0.0/8")',
            {"a": "nope"},
            "invalid_value",
            "`nope` is not an IP address",
        ),
        (
            'in_cidr("10.0.0.1", resource.a)',
            {"a": "nope"},
            "invalid_value",
            "`nope` is not a network such as `10.0.0.0/8`",
        ),
        (
            "time(resource.a) < now()",
            {"a": "nope"},
            "invalid_value",
            "`nope` is not an ISO 8601 time",
        ),
        # Shapes Python's own parser would take, none of them a time a person wrote:
        # a run of digits (the year 1111), the basic form, a week date, an hour alone.
        *(
            (
                "time(resource.a) < now()",
                {"a": text},
                "invalid_value",
                f"`{text}` is not an ISO 8601 time",
            )
            for text in ("1" * 16, "20261126T090000", "2026-W48-4", "2026-11-26T09Z")
        ),
        (
            "hour(resource.a) == 1",
            {"a": "2026-01-01"},
            "type_error",
            "`hour` needs a time (use `time(...)`), got a string",
        ),
    ],
)
def test_function_errors(expr: str, props: dict[str, Any], code: str, message: str) -> None:
    assert error_of(expr, **props) == (code, message)


def test_now_is_the_request_clock() -> None:
    expr = 'now() > time("2030-01-01")'
    assert not when(expr).allowed
    assert when(expr, now=datetime(2031, 1, 1, tzinfo=UTC)).allowed


def test_now_defaults_to_the_real_clock() -> None:
    assert when('now() > time("2020-01-01")', now=None).allowed


def test_hour_and_weekday_are_utc() -> None:
    assert holds('hour(time("2026-11-26T23:30:00+02:00")) == 21')
    plus_two = timezone(timedelta(hours=2))
    # Monday 00:30 at +02:00 is still Sunday in UTC
    assert when("weekday(now()) == 7", now=datetime(2026, 11, 23, 0, 30, tzinfo=plus_two)).allowed


# --- explain -----------------------------------------------------------------------


def test_explain_traces_every_candidate(docs: Any) -> None:
    req = request("update", subject_id="bob", resource={"owner": "carol", "archived": True})
    d = decide(docs, req, frozenset({"editor"}), explain=True)
    assert not d.allowed
    assert d.trace == (
        RuleTrace("locked", "forbid", "test.pdp:16", "any", "false", False),
        RuleTrace("admin-all", "permit", "test.pdp:13", None, NO_ROLE, False),
        RuleTrace("editor-update", "permit", "test.pdp:11", "editor", "false", False),
        RuleTrace("owner-all", "permit", "test.pdp:12", None, NO_ROLE, False),
    )


def test_explain_shows_errors_and_matches_the_plain_decision(docs: Any) -> None:
    req = request("read", resource={"public": 1})
    plain = decide(docs, req, frozenset({"viewer"}))
    explained = decide(docs, req, frozenset({"viewer"}), explain=True)
    assert (explained.allowed, explained.reasons) == (plain.allowed, plain.reasons)
    assert explained.trace == (
        RuleTrace("admin-all", "permit", "test.pdp:13", None, NO_ROLE, False),
        RuleTrace(
            "owner-all",
            "permit",
            "test.pdp:12",
            None,
            "error: derived role `owner`: `resource.owner` is missing",
            False,
        ),
        RuleTrace(
            "public-read",
            "permit",
            "test.pdp:14",
            "any",
            "error: `and` needs bools, got an int from `resource.public`",
            False,
        ),
        RuleTrace("viewer-read", "permit", "test.pdp:10", "viewer", "none", True),
    )
    assert plain.trace == ()


def test_explain_of_an_erroring_forbid() -> None:
    policy = compile_text(ERRORS)
    d = decide(policy, request("update"), explain=True)
    assert (d.allowed, d.reasons) == (False, ("forbid-errs",))
    t = d.trace[0]
    assert (t.rule_id, t.effect, t.role, t.condition, t.applied) == (
        "forbid-errs",
        "forbid",
        "any",
        "error: `resource.locked` is missing",
        True,
    )


def test_where_is_the_line_of_the_effect() -> None:
    policy = compile_text(ERRORS)
    assert policy.rule_location("forbid-errs") == "test.pdp:8"
    assert decide(policy, request("update"), explain=True).trace[0].where == "test.pdp:8"


def test_explain_does_not_change_the_diagnostics() -> None:
    policy = compile_text(
        "resource document {\n  actions read\n"
        '  @id("f") forbid any to read\n'
        '  @id("p") permit any to read when resource.missing\n}\n'
    )
    plain = decide(policy, request())
    assert decide(policy, request(), explain=True).diagnostics == plain.diagnostics


# --- versions and caching ----------------------------------------------------------


def test_policy_version_is_a_content_hash() -> None:
    a = load_texts({"a.pdp": "role x\n", "b.pdp": "role y\n"}).unwrap()
    b = load_texts({"b.pdp": "role y\n", "a.pdp": "role x\n"}).unwrap()
    assert a.version == b.version
    assert a.version.startswith("sha256:") and len(a.version) == len("sha256:") + 16
    # every byte and every name counts
    assert load_texts({"a.pdp": "role x \n", "b.pdp": "role y\n"}).unwrap().version != a.version
    assert load_texts({"c.pdp": "role x\n", "b.pdp": "role y\n"}).unwrap().version != a.version
    # moving content between files changes it too
    assert load_texts({"a.pdp": "role x\nrole y\n", "b.pdp": ""}).unwrap().version != a.version


def test_decisions_carry_the_policy_version() -> None:
    policy = compile_files({"x.pdp": "resource document {\n  actions read\n}\n"})
    assert check(policy, request()).policy_version == policy.version
    assert check(policy, request(resource_type="nope")).policy_version == policy.version


def test_compile_cache_returns_the_same_object_for_the_same_version() -> None:
    text = "role r\nresource document {\n  actions read\n  permit r to read\n}\n"
    first = compile_policy_set(load_texts({"c.pdp": text}).unwrap())
    again = compile_policy_set(load_texts({"c.pdp": text}).unwrap())
    other = compile_policy_set(load_texts({"c.pdp": text + "\n"}).unwrap())
    assert first is again
    assert other is not first
    assert other.version != first.version


def test_compiled_sets_are_immutable() -> None:
    policy = compile_text("resource document {\n  actions read\n}\n")
    with pytest.raises(TypeError):
        policy.index[("x", "y")] = policy.index[("document", "read")]  # type: ignore[index]
    assert policy.rule_location("nope") is None


def test_rule_locations_and_ids() -> None:
    policy = compile_text("resource document {\n  actions read\n  permit any to read\n}\n")
    assert list(policy.rules) == ["test.pdp:3"]
    assert policy.rule_location("test.pdp:3") == "test.pdp:3"


def test_decision_json_shape(docs: Any) -> None:
    d = check(docs, request("update", resource={"owner": "carol"}))
    assert d.to_json() == {
        "decision": False,
        "action": "update",
        "reasons": [],
        "diagnostics": [],
        "policy_version": docs.version,
    }
    e = check(docs, request("read", resource={"public": "yes", "owner": "carol"}))
    assert e.to_json()["diagnostics"] == [
        {
            "code": "type_error",
            "message": "`and` needs bools, got a string from `resource.public`",
            "rule_id": "public-read",
        }
    ]
    assert NOW.tzinfo is UTC
