"""The SQL store's repository: writes, lookups, revisions and refusals, on both databases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from pdp.engine.request import Resource
from pdp.store.errors import InvalidInput, NotFound
from pdp.store.sql import SqlStore
from pdp.store.validate import RoleCatalog

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def scopes(
    type_: str = "document", id_: str = "42", tenant: str | None = "acme", *anc: str
) -> tuple[str, ...]:
    props = {"tenant": tenant} if tenant else {}
    return Resource(type_, id_, props, tuple(anc)).scopes()


@contextmanager
def statements(store: SqlStore) -> Iterator[list[str]]:
    """Collect the SQL statements the store sends (SQLite's BEGIN aside)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "ROLLBACK", "COMMIT"):
            seen.append(statement)

    for engine in store.engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in store.engines:
            event.remove(engine, "before_cursor_execute", record)


class TestGrantRevokeList:
    def test_grant_then_list_then_revoke(self, store: SqlStore, roles: RoleCatalog) -> None:
        r = store.grant("user:alice", "editor", "tenant/acme", roles=roles, created_by="ops")
        assert r.changed and r.revision == 1
        [b] = store.list_bindings()
        assert (b.subject, b.role, b.scope, b.expires, b.created_by) == (
            "user:alice",
            "editor",
            "tenant/acme",
            None,
            "ops",
        )
        assert b.created_at is not None and b.created_at.tzinfo is not None
        r = store.revoke("user:alice", "editor", "tenant/acme")
        assert r.changed and r.revision == 2
        assert store.list_bindings() == []

    def test_duplicate_grant_is_reported_not_an_error(self, store: SqlStore) -> None:
        store.grant("user:alice", "editor", "tenant/acme")
        again = store.grant("user:alice", "editor", "tenant/acme")
        assert not again.changed
        assert "already holds" in again.message
        assert again.revision == 1 == store.revision()

    def test_grant_with_other_expiry_updates_it(self, store: SqlStore) -> None:
        later = NOW + timedelta(days=30)
        store.grant("user:alice", "editor", expires=NOW + timedelta(days=1), now=NOW)
        r = store.grant("user:alice", "editor", expires=later, now=NOW)
        assert r.changed and [c.op for c in r.changes] == ["update-expiry"]
        [b] = store.list_bindings()
        assert b.expires == later

    def test_list_filters(self, store: SqlStore) -> None:
        store.grant("user:alice", "editor", "tenant/acme")
        store.grant("user:alice", "viewer", "document/1")
        store.grant("user:bob", "viewer", "tenant/acme")
        store.grant(
            "user:carol", "viewer", "tenant/acme", expires=NOW + timedelta(hours=1), now=NOW
        )
        assert [b.role for b in store.list_bindings(subject="user:alice")] == ["viewer", "editor"]
        assert {b.subject for b in store.list_bindings(role="viewer")} == {
            "user:alice",
            "user:bob",
            "user:carol",
        }
        assert {b.subject for b in store.list_bindings(scope="tenant/acme", role="viewer")} == {
            "user:bob",
            "user:carol",
        }
        later = NOW + timedelta(hours=2)
        active = store.list_bindings(scope="tenant/acme", include_expired=False, now=later)
        assert {b.subject for b in active} == {"user:alice", "user:bob"}

    def test_revoke_of_nothing_is_not_found_and_changes_nothing(self, store: SqlStore) -> None:
        store.grant("user:alice", "editor", "tenant/acme")
        with pytest.raises(NotFound, match="holds no `editor` in `global`"):
            store.revoke("user:alice", "editor")
        assert store.revision() == 1


class TestLookup:
    def test_every_scope_kind_reaches_the_resource(self, store: SqlStore) -> None:
        store.grant("user:a", "viewer", "global")
        store.grant("user:a", "editor", "tenant/acme")
        store.grant("user:a", "admin", "folder/1")  # an ancestor
        store.grant("user:b", "editor", "document/42")  # the resource itself
        store.grant("user:b", "admin", "document/43")  # another resource: no
        store.grant("user:b", "admin", "tenant/globex")  # another tenant: no
        here = scopes("document", "42", "acme", "folder/7", "folder/1")
        assert store.roles_for("user:a", here, NOW) == {"viewer", "editor", "admin"}
        assert store.roles_for("user:b", here, NOW) == {"editor"}
        assert store.roles_for("user:a", scopes(tenant=None), NOW) == {"viewer"}
        assert store.roles_for("user:nobody", here, NOW) == frozenset()

    def test_roles_come_through_nested_groups(self, store: SqlStore) -> None:
        store.add_member("group:leads", "user:bob")
        store.add_member("group:editors", "group:leads")
        store.add_member("group:staff", "group:editors")
        store.grant("group:staff", "viewer", "global")
        store.grant("group:editors", "editor", "tenant/acme")
        store.grant("group:leads", "admin", "document/42")
        assert store.roles_for("user:bob", scopes(), NOW) == {"viewer", "editor", "admin"}
        assert store.roles_for("group:editors", scopes(), NOW) == {"viewer", "editor"}
        store.remove_member("group:editors", "group:leads")
        assert store.roles_for("user:bob", scopes(), NOW) == {"admin"}

    def test_expired_bindings_hold_nothing(self, store: SqlStore) -> None:
        store.grant("user:a", "editor", expires=NOW + timedelta(hours=1), now=NOW)
        store.grant("user:a", "viewer")
        assert store.roles_for("user:a", ["global"], NOW) == {"editor", "viewer"}
        later = NOW + timedelta(hours=1)  # expiry is exclusive: at the instant, gone
        assert store.roles_for("user:a", ["global"], later) == {"viewer"}

    def test_lookup_reports_the_revision(self, store: SqlStore) -> None:
        store.grant("user:a", "viewer")
        store.grant("user:b", "viewer")
        lookup = store.lookup("user:a", ["global"], NOW)
        assert lookup.revision == 2
        assert lookup.rows == (("viewer", None),)
        assert store.bindings_version == "2"

    def test_one_round_trip_however_deep_the_groups(self, store: SqlStore) -> None:
        prev = "user:deep"
        for i in range(12):
            store.add_member(f"group:g{i}", prev)
            store.grant(f"group:g{i}", "viewer", f"folder/{i}")
            prev = f"group:g{i}"
        here = scopes("document", "1", "acme", *[f"folder/{i}" for i in range(12)])
        with statements(store) as seen:
            roles = store.roles_for("user:deep", here, NOW)
        assert roles == {"viewer"}
        assert len(seen) == 1, seen

    def test_attributes(self, store: SqlStore) -> None:
        assert dict(store.attributes("user:a")) == {}
        store.set_attributes("user:a", {"tenant": "acme", "level": 3, "tags": ["x"]})
        assert dict(store.attributes("user:a")) == {"tenant": "acme", "level": 3, "tags": ["x"]}
        store.set_attributes("user:a", {"level": 4}, unset=["tags"])
        assert dict(store.attributes("user:a")) == {"tenant": "acme", "level": 4}
        store.set_attributes("user:a", {"tenant": "globex"}, replace=True)
        assert dict(store.attributes("user:a")) == {"tenant": "globex"}
        same = store.set_attributes("user:a", {"tenant": "globex"})
        assert not same.changed


class TestRevision:
    def test_every_change_bumps_it_and_no_op_does_not(self, store: SqlStore) -> None:
        assert store.revision() == 0
        steps = [
            lambda: store.grant("user:a", "viewer"),
            lambda: store.set_attributes("user:a", {"tenant": "acme"}),
            lambda: store.add_member("group:g", "user:a"),
            lambda: store.remove_member("group:g", "user:a"),
            lambda: store.revoke("user:a", "viewer"),
        ]
        for i, step in enumerate(steps, 1):
            assert step().revision == i == store.revision()
        assert not store.set_attributes("user:a", {"tenant": "acme"}).changed
        assert store.revision() == 5


class TestGroups:
    def test_members_and_groups(self, store: SqlStore) -> None:
        store.add_member("group:eng", "user:bob")
        store.add_member("group:eng", "user:alice")
        store.add_member("group:all", "group:eng")
        assert store.members("group:eng") == ("user:alice", "user:bob")
        assert store.groups() == {
            "group:all": ("group:eng",),
            "group:eng": ("user:alice", "user:bob"),
        }
        again = store.add_member("group:eng", "user:bob")
        assert not again.changed and "already a member" in again.message

    def test_cycles_are_refused(self, store: SqlStore) -> None:
        store.add_member("group:a", "group:b")
        store.add_member("group:b", "group:c")
        rev = store.revision()
        with pytest.raises(InvalidInput, match="would make a cycle"):
            store.add_member("group:c", "group:a")
        with pytest.raises(InvalidInput, match="member of itself"):
            store.add_member("group:a", "group:a")
        assert store.revision() == rev
        assert store.members("group:c") == ()

    def test_only_groups_have_members(self, store: SqlStore) -> None:
        with pytest.raises(InvalidInput, match="not a group"):
            store.add_member("user:alice", "user:bob")
        with pytest.raises(NotFound):
            store.remove_member("group:eng", "user:bob")

    def test_subject_info(self, store: SqlStore) -> None:
        store.add_member("group:leads", "user:bob")
        store.add_member("group:eng", "group:leads")
        store.grant("group:eng", "editor", "tenant/acme")
        store.grant("user:bob", "viewer", "document/1")
        store.set_attributes("user:bob", {"tenant": "acme"})
        info = store.subject_info("user:bob")
        assert info.exists and dict(info.attributes) == {"tenant": "acme"}
        assert info.groups == ("group:leads",)
        assert info.all_groups == ("group:eng", "group:leads")
        assert [(b.role, b.scope) for b in info.bindings] == [("viewer", "document/1")]
        assert [(b.subject, b.role) for b in info.inherited] == [("group:eng", "editor")]
        assert store.subject_info("group:leads").members == ("user:bob",)
        assert not store.subject_info("user:nobody").exists


class TestBadInputChangesNothing:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"subject": "alice"}, "`alice` is not a subject; write `type:id`"),
            ({"subject": "user:"}, "is not a subject"),
            ({"scope": "tenant/"}, "`tenant/` is not a scope"),
            ({"scope": "everywhere"}, "is not a scope"),
            (
                {"role": "editr"},
                "role `editr` is not declared by the loaded policies; did you mean `editor`?",
            ),
            ({"role": "owner"}, "role `owner` is a derived role"),
            ({"expires": NOW - timedelta(seconds=1)}, "is in the past"),
            ({"expires": datetime(2030, 1, 1)}, "has no time zone"),
        ],
    )
    def test_grant_refuses(
        self, store: SqlStore, roles: RoleCatalog, kwargs: dict[str, Any], message: str
    ) -> None:
        args: dict[str, Any] = {"subject": "user:alice", "role": "editor", "scope": "global"}
        args.update(kwargs)
        expires = args.pop("expires", None)
        with pytest.raises(InvalidInput) as info:
            store.grant(
                args["subject"], args["role"], args["scope"], expires=expires, roles=roles, now=NOW
            )
        assert message in info.value.message
        assert store.revision() == 0
        assert store.list_bindings() == []

    def test_attribute_names_must_be_text(self, store: SqlStore) -> None:
        with pytest.raises(InvalidInput):
            store.set_attributes("user:a", {"": 1})
        assert store.revision() == 0

    def test_nan_and_infinity_are_not_values(self, store: SqlStore) -> None:
        # JSON has no such numbers (PostgreSQL refuses them), and `<` cannot order NaN.
        for value, where in ((float("nan"), "c"), ({"x": [1, float("inf")]}, "c.x[1]")):
            with pytest.raises(InvalidInput, match=rf"attribute `{re.escape(where)}`: NaN"):
                store.set_attributes("user:a", {"c": value})
        assert store.revision() == 0
