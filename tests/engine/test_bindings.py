"""Role bindings in memory: scopes, groups, expiry; and evaluation on top of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from pdp.engine.bindings import Bindings, RoleBinding, check_scope, parse_subject_ref
from pdp.engine.request import Action, Resource
from pdp.evaluation import enrich, evaluate
from pdp.store.errors import StoreUnavailable
from tests.helpers import NOW, compile_text, request

# --- scopes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "scopes"),
    [
        (Resource("document", "1"), ("global", "document/1")),
        (
            Resource("document", "1", {"tenant": "acme"}),
            ("global", "tenant/acme", "document/1"),
        ),
        (
            Resource("document", "1", {"tenant": "acme"}, ("folder/7", "folder/1")),
            ("global", "tenant/acme", "folder/1", "folder/7", "document/1"),
        ),
        (Resource("document", "1", {}, ("folder/7",)), ("global", "folder/7", "document/1")),
        (Resource("document", "1", {"tenant": ""}), ("global", "document/1")),
        (Resource("document", "1", {"tenant": 42}), ("global", "document/1")),
    ],
)
def test_resource_scopes_broadest_first(resource: Resource, scopes: tuple[str, ...]) -> None:
    assert resource.scopes() == scopes
    assert resource.tenant == (scopes[1][len("tenant/") :] if "tenant/acme" in scopes else None)


# --- roles_for ---------------------------------------------------------------------

B = Bindings(
    subjects={"user:alice": {"department": "eng", "tenant": "acme"}},
    groups={
        "group:eng": frozenset({"user:alice", "group:leads"}),
        "group:leads": frozenset({"user:carol"}),
        "group:all": frozenset({"group:eng"}),
    },
    bindings=(
        RoleBinding("user:alice", "viewer"),
        RoleBinding("user:alice", "editor", "tenant/acme"),
        RoleBinding("user:alice", "owner-ish", "document/1"),
        RoleBinding("user:alice", "folder-admin", "folder/7"),
        RoleBinding("group:eng", "eng-reader", "tenant/acme"),
        RoleBinding("group:all", "everyone"),
        RoleBinding("user:bob", "admin"),
        RoleBinding("user:alice", "temp", expires=NOW + timedelta(hours=1)),
        RoleBinding("user:alice", "gone", expires=NOW - timedelta(seconds=1)),
        RoleBinding("user:alice", "edge", expires=NOW),
    ),
)


def roles(subject: str, resource: Resource, now: datetime = NOW) -> frozenset[str]:
    return B.roles_for(subject, resource.scopes(), now)


def test_global_bindings() -> None:
    assert roles("user:alice", Resource("invoice", "9")) == {"viewer", "everyone", "temp"}
    assert roles("user:bob", Resource("invoice", "9")) == {"admin"}
    assert roles("user:nobody", Resource("invoice", "9")) == frozenset()


def test_tenant_bindings_need_the_resource_tenant() -> None:
    with_tenant = Resource("invoice", "9", {"tenant": "acme"})
    other = Resource("invoice", "9", {"tenant": "globex"})
    assert {"editor", "eng-reader"} <= roles("user:alice", with_tenant)
    assert not {"editor", "eng-reader"} & roles("user:alice", other)


def test_resource_bindings_reach_only_that_resource() -> None:
    assert "owner-ish" in roles("user:alice", Resource("document", "1"))
    assert "owner-ish" not in roles("user:alice", Resource("document", "2"))
    assert "owner-ish" not in roles("user:alice", Resource("folder", "1"))


def test_ancestor_bindings_reach_descendants() -> None:
    inside = Resource("document", "5", {}, ("folder/7", "folder/1"))
    outside = Resource("document", "5", {}, ("folder/8",))
    assert "folder-admin" in roles("user:alice", inside)
    assert "folder-admin" in roles("user:alice", Resource("folder", "7"))
    assert "folder-admin" not in roles("user:alice", outside)


def test_nested_groups() -> None:
    assert B.groups_of("user:alice") == {"group:eng", "group:all"}
    assert B.groups_of("user:carol") == {"group:leads", "group:eng", "group:all"}
    assert B.groups_of("group:leads") == {"group:eng", "group:all"}
    acme = Resource("invoice", "9", {"tenant": "acme"})
    assert roles("user:carol", acme) == {"eng-reader", "everyone"}


def test_group_membership_cycles_do_not_loop() -> None:
    looped = Bindings(
        groups={"group:a": frozenset({"group:b", "user:x"}), "group:b": frozenset({"group:a"})},
        bindings=(RoleBinding("group:b", "r"),),
    )
    assert looped.groups_of("user:x") == {"group:a", "group:b"}
    assert looped.roles_for("user:x", ("global",), NOW) == {"r"}


def test_expiry() -> None:
    anywhere = Resource("invoice", "9")
    assert "temp" in roles("user:alice", anywhere)
    assert "temp" not in roles("user:alice", anywhere, NOW + timedelta(hours=1))
    assert "gone" not in roles("user:alice", anywhere)
    assert "edge" not in roles("user:alice", anywhere)  # expiry is exclusive
    assert "edge" in roles("user:alice", anywhere, NOW - timedelta(microseconds=1))


def test_binding_active() -> None:
    assert RoleBinding("user:a", "r").active(NOW)
    assert RoleBinding("user:a", "r", expires=NOW + timedelta(seconds=1)).active(NOW)
    assert not RoleBinding("user:a", "r", expires=NOW).active(NOW)


def test_attributes_and_declared_roles() -> None:
    assert B.attributes("user:alice") == {"department": "eng", "tenant": "acme"}
    assert dict(B.attributes("user:nobody")) == {}
    assert "temp" in B.declared_roles() and "admin" in B.declared_roles()


def test_bindings_are_immutable() -> None:
    with pytest.raises(AttributeError):
        B.bindings = ()  # type: ignore[misc]


# --- references --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("user:alice", ("user", "alice")),
        ("service:billing-api", ("service", "billing-api")),
        ("group:eng", ("group", "eng")),
        ("user:alice@example.com", ("user", "alice@example.com")),
        ("user:a:b", ("user", "a:b")),
    ],
)
def test_subject_refs(text: str, parsed: tuple[str, str]) -> None:
    assert parse_subject_ref(text) == parsed


@pytest.mark.parametrize("text", ["alice", "user:", ":alice", "user: alice", "", "user:a b"])
def test_bad_subject_refs(text: str) -> None:
    with pytest.raises(ValueError, match="is not a subject; write `type:id`"):
        parse_subject_ref(text)


@pytest.mark.parametrize("text", ["global", "tenant/acme", "document/42", "folder/a/b"])
def test_scopes(text: str) -> None:
    assert check_scope(text) == text


@pytest.mark.parametrize("text", ["", "globall", "tenant/", "document", "/42", "a b/c"])
def test_bad_scopes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a scope"):
        check_scope(text)


# --- evaluation on bindings --------------------------------------------------------

POLICY = """\
role viewer
role editor : viewer
resource document {
  actions read, update
  @id("read") permit viewer to read
  @id("update") permit editor to update when subject.department == "eng"
}
"""


def test_evaluate_uses_scopes_groups_and_stored_attributes() -> None:
    policy = compile_text(POLICY)
    bindings = Bindings(
        subjects={"user:alice": {"department": "eng"}},
        groups={"group:eng": frozenset({"user:alice"})},
        bindings=(RoleBinding("group:eng", "editor", "tenant/acme"),),
    )
    acme = {"tenant": "acme"}
    reqs = [
        request("read", resource=acme),
        request("update", resource=acme),
        request("update", resource={"tenant": "globex"}),
    ]
    got = evaluate(policy, reqs, bindings, now=NOW)
    assert [(d.action, d.allowed, d.reasons) for d in got] == [
        ("read", True, ("read",)),
        ("update", True, ("update",)),
        ("update", False, ()),
    ]
    assert got[0].roles_used == ("editor",)


def test_stored_attributes_win_over_the_request() -> None:
    bindings = Bindings(
        subjects={"user:alice": {"department": "sales"}},
        bindings=(RoleBinding("user:alice", "editor"),),
    )
    req = request("update", subject={"department": "eng", "extra": 1})
    enriched = enrich(req.subject, bindings)
    assert dict(enriched.properties) == {"department": "sales", "extra": 1}
    nobody = request(subject_id="nobody").subject
    assert enrich(nobody, bindings) == nobody
    # the caller's claim of `eng` does not get the update through
    assert not evaluate(compile_text(POLICY), [req], bindings, now=NOW)[0].allowed


def test_evaluate_reports_the_subjects_the_engine_saw() -> None:
    # The audit log records these rather than reading the store again, which could
    # by then say something else.
    class Counting(Bindings):
        reads = 0

        def attributes(self, subject: str) -> Mapping[str, Any]:
            Counting.reads += 1
            return super().attributes(subject)

    bindings = Counting(subjects={"user:alice": {"department": "eng"}})
    reqs = [request("read"), request("update"), request("read", subject_id="bob")]
    seen: dict[int, Any] = {}
    evaluate(compile_text(POLICY), reqs, bindings, now=NOW, seen=seen)
    assert Counting.reads == 2  # once per distinct subject
    for r in reqs:  # every request's subject object, grouped or not
        assert seen[id(r.subject)] == enrich(r.subject, bindings)
    assert dict(seen[id(reqs[1].subject)].properties) == {"department": "eng"}


def test_expiry_uses_the_evaluation_clock() -> None:
    policy = compile_text(POLICY)
    bindings = Bindings(bindings=(RoleBinding("user:alice", "viewer", expires=NOW),))
    before = NOW - timedelta(minutes=1)
    assert evaluate(policy, [request(now=before)], bindings, now=before)[0].allowed
    assert not evaluate(policy, [request()], bindings, now=NOW)[0].allowed


def test_evaluate_keeps_request_order_across_targets() -> None:
    policy = compile_text(POLICY)
    bindings = Bindings(bindings=(RoleBinding("user:alice", "viewer", "document/1"),))
    reqs = [
        request("read", resource_id="1"),
        request("read", resource_id="2"),
        request("update", resource_id="1"),
        request("read", resource_id="1"),
    ]
    assert [d.allowed for d in evaluate(policy, reqs, bindings, now=NOW)] == [
        True,
        False,
        False,
        True,
    ]


class _DownStore:
    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        raise StoreUnavailable("the database cannot be reached")

    def attributes(self, subject: str) -> Mapping[str, Any]:
        return {}


def test_a_failing_store_denies_every_request() -> None:
    policy = compile_text("resource document {\n  actions read\n  permit any to read\n}\n")
    got = evaluate(policy, [request(), request()], _DownStore(), now=NOW)
    assert [(d.allowed, [x.code for x in d.diagnostics]) for d in got] == [
        (False, ["store_unavailable"]),
        (False, ["store_unavailable"]),
    ]


# --- sharing within one evaluate() call -----------------------------------------------

SHARED = """
role viewer
resource document {
  actions read, update, share
  @id("read") permit viewer to read
  @id("named") permit any to update, share when action.name == "share"
  @id("flagged") permit any to update when action has flag and action.flag
  @id("guard") forbid any to * unless resource.tenant == subject.tenant
  @id("broken") forbid any to share when resource.missing
}
"""


def _outcomes(decisions: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [(d.action, d.allowed, d.reasons, d.diagnostics, d.roles_used) for d in decisions]


def test_a_batch_on_one_target_decides_as_each_request_alone() -> None:
    # One subject, resource and context object for all (the server's batch shape):
    # conditions not reading `action` are shared, those reading it are not, and a
    # shared error is reported on every decision it affects.
    policy = compile_text(SHARED)
    bindings = Bindings(bindings=(RoleBinding("user:alice", "viewer"),))
    first = request("read", subject={"tenant": "acme"}, resource={"tenant": "acme"})
    asked = [
        ("read", {}),
        ("update", {}),
        ("share", {}),
        ("update", {"flag": True}),
        ("share", {}),
        ("read", {}),
    ]
    reqs = [replace(first, action=Action(a, props)) for a, props in asked]
    together = evaluate(policy, reqs, bindings, now=NOW)
    alone = [evaluate(policy, [r], bindings, now=NOW)[0] for r in reqs]
    assert _outcomes(together) == _outcomes(alone)
    assert [d.allowed for d in together] == [True, False, False, True, False, True]
    assert [[x.rule_id for x in d.diagnostics] for d in together if d.action == "share"] == [
        ["broken"],
        ["broken"],
    ]


def test_equal_but_distinguishable_targets_are_not_grouped() -> None:
    # `1 == True` in Python, but not in the policy language: a request whose tenant is
    # `True` must not be decided with the values of one whose tenant is `1`.
    policy = compile_text(SHARED)
    bindings = Bindings(bindings=(RoleBinding("user:alice", "viewer"),))
    reqs = [
        request("read", subject={"tenant": 1}, resource={"tenant": 1}),
        request("read", subject={"tenant": 1}, resource={"tenant": True}),
        request("read", subject={"tenant": 1}, resource={"tenant": 1.0}),
    ]
    got = evaluate(policy, reqs, bindings, now=NOW)
    assert [d.allowed for d in got] == [True, False, True]
    assert _outcomes(got) == [_outcomes(evaluate(policy, [r], bindings, now=NOW))[0] for r in reqs]
