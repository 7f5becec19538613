"""`import`/`export`: one transaction, idempotent, dry runs, and the YAML `pdp check` reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.engine.bindings import Bindings
from pdp.store.document import dump_bindings, load_bindings_file, parse_bindings
from pdp.store.errors import InvalidInput
from pdp.store.importer import StoredState, plan_import
from pdp.store.sql import SqlStore
from pdp.store.validate import RoleCatalog

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

DOC = """
subjects:
  - id: user:alice
    attributes: {tenant: acme, department: it}
  - id: user:bob
    attributes: {tenant: acme, level: 3}
groups:
  - id: group:editors
    members: [user:dave, group:leads]
  - id: group:leads
    members: [user:bob]
bindings:
  - {subject: user:alice, role: admin, scope: tenant/acme}
  - {subject: group:editors, role: editor, scope: tenant/acme}
  - {subject: user:carol, role: viewer, scope: folder/7, expires: 2027-03-31T00:00:00Z}
  - {subject: user:erin, role: editor, scope: folder/7, expires: 2026-09-30T00:00:00Z}
"""


def doc(text: str = DOC) -> Bindings:
    return parse_bindings(yaml.safe_load(text))


def snapshot(store: SqlStore) -> dict[str, Any]:
    b = store.export(include_expired=True)
    return {
        "doc": dump_bindings(b),
        "revision": store.revision(),
    }


def test_import_is_idempotent(store: SqlStore, roles: RoleCatalog) -> None:
    first = store.import_bindings(doc(), roles=roles, now=NOW, created_by="importer")
    assert first.changed and first.revision == 1
    ops = sorted(c.op for c in first.changes)
    assert ops.count("grant") == 3 and ops.count("add-member") == 3
    assert ops.count("set-attributes") == 2
    # erin's editor binding had already expired: left out, and said so.
    assert first.notes == (
        "skipped `editor` in `folder/7` until 2026-09-30T00:00:00Z for `user:erin`: "
        "already expired",
    )
    assert store.roles_for("user:bob", ["global", "tenant/acme"], NOW) == {"editor"}
    [alice] = store.list_bindings(subject="user:alice")
    assert alice.created_by == "importer"
    before = snapshot(store)
    second = store.import_bindings(doc(), roles=roles, now=NOW)
    assert not second.changed and second.changes == ()
    assert "already holds the document" in second.message
    assert snapshot(store) == before


def test_dry_run_lists_the_changes_and_makes_none(store: SqlStore, roles: RoleCatalog) -> None:
    store.grant("user:alice", "viewer", "global")
    before = snapshot(store)
    dry = store.import_bindings(doc(), roles=roles, now=NOW, dry_run=True)
    assert not dry.changed
    assert dry.message.startswith("would apply: ")
    assert snapshot(store) == before
    real = store.import_bindings(doc(), roles=roles, now=NOW)
    assert real.changed and real.changes == dry.changes


def test_dry_run_really_writes_nothing(store: SqlStore) -> None:
    store.import_bindings(doc(), now=NOW, dry_run=True)
    assert store.revision() == 0
    assert store.export(include_expired=True) == Bindings()


def test_merge_keeps_and_replace_removes_what_the_file_lacks(store: SqlStore) -> None:
    store.grant("user:zed", "viewer", "global")
    store.add_member("group:old", "user:zed")
    store.set_attributes("user:zed", {"tenant": "x"})
    store.import_bindings(doc(), now=NOW)
    assert store.list_bindings(subject="user:zed")
    result = store.import_bindings(doc(), now=NOW, replace=True)
    assert sorted(c.op for c in result.changes) == ["remove-member", "revoke", "set-attributes"]
    assert store.list_bindings(subject="user:zed") == []
    assert "group:old" not in store.groups()
    assert dict(store.attributes("user:zed")) == {}


def test_expiry_changes_are_updates(store: SqlStore) -> None:
    store.import_bindings(doc(), now=NOW)
    changed = DOC.replace("2027-03-31T00:00:00Z", "2027-06-30T00:00:00Z")
    result = store.import_bindings(doc(changed), now=NOW)
    assert [c.op for c in result.changes] == ["update-expiry"]
    [carol] = store.list_bindings(subject="user:carol")
    assert carol.expires == datetime(2027, 6, 30, tzinfo=UTC)


def test_bad_documents_change_nothing(store: SqlStore, roles: RoleCatalog) -> None:
    store.add_member("group:leads", "group:editors")  # the file adds the other half
    before = snapshot(store)
    with pytest.raises(InvalidInput, match="cycle"):
        store.import_bindings(doc(), now=NOW)
    bad_roles = DOC.replace("role: admin", "role: admn").replace("role: viewer", "role: owner")
    with pytest.raises(InvalidInput) as info:
        store.import_bindings(doc(bad_roles), roles=roles, now=NOW)
    assert "role `admn` is not declared" in info.value.message
    assert "role `owner` is a derived role" in info.value.message
    twice = (
        DOC + "  - {subject: user:alice, role: admin, scope: tenant/acme, expires: 2030-01-01}\n"
    )
    with pytest.raises(InvalidInput, match="listed twice with different expiries"):
        store.import_bindings(doc(twice), now=NOW)
    assert snapshot(store) == before


def test_import_is_one_transaction(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure half-way (after subjects and memberships went in) leaves nothing behind."""
    real = SqlStore._bulk_insert
    calls = {"n": 0}

    def failing(self: SqlStore, conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
        calls["n"] += 1
        if table.name == "pdp_bindings":
            raise RuntimeError("disk full, say")
        real(self, conn, table, rows)

    monkeypatch.setattr(SqlStore, "_bulk_insert", failing)
    with pytest.raises(RuntimeError):
        store.import_bindings(doc(), now=NOW)
    monkeypatch.setattr(SqlStore, "_bulk_insert", real)
    assert calls["n"] >= 2
    assert store.revision() == 0
    assert store.export(include_expired=True) == Bindings()


def test_large_imports_take_the_bulk_path(store: SqlStore) -> None:
    """Over 500 rows PostgreSQL uses COPY; the result is the same as row by row."""
    rows = [
        {"subject": f"user:u{i}", "role": "viewer", "scope": f"document/{i % 7}"}
        for i in range(1200)
    ]
    rows.append(
        {
            "subject": "user:u1",
            "role": "editor",
            "scope": "global",
            "expires": "2030-01-01T00:00:00Z",
        }
    )
    big = parse_bindings(
        {
            "bindings": rows,
            "subjects": [
                {"id": f"user:u{i}", "attributes": {"n": i, "tags": ["a", "b"]}} for i in range(600)
            ],
        }
    )
    result = store.import_bindings(big, now=NOW)
    assert len(result.changes) == 1201 + 600
    assert len(store.list_bindings()) == 1201
    assert dict(store.attributes("user:u599")) == {"n": 599, "tags": ["a", "b"]}
    assert store.roles_for("user:u1", ["global", "document/1"], NOW) == {"viewer", "editor"}
    assert not store.import_bindings(big, now=NOW).changed


def test_export_round_trips_through_the_file_pdp_check_reads(
    store: SqlStore, store_url: str, tmp_path: Path
) -> None:
    store.import_bindings(doc(), now=NOW)
    exported = store.export(now=NOW)
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(dump_bindings(exported), sort_keys=False), encoding="utf-8")
    # What `pdp check --bindings` reads is what the store holds ...
    read_back = load_bindings_file(path, {"viewer", "editor", "admin"})
    assert read_back == exported
    for subject in ("user:alice", "user:bob", "user:dave", "user:carol", "group:leads"):
        for where in (["global", "tenant/acme"], ["global", "tenant/acme", "folder/7"]):
            assert read_back.roles_for(subject, where, NOW) == store.roles_for(
                subject, where, NOW
            ), (subject, where)
        assert dict(read_back.attributes(subject)) == dict(store.attributes(subject))
    # ... and importing it into an empty store gives the same store.
    other = SqlStore(f"sqlite:///{tmp_path / 'copy.db'}")
    other.import_bindings(read_back, now=NOW)
    assert other.export(now=NOW) == exported
    other.close()


def test_plan_is_pure_and_ordered() -> None:
    stored = StoredState(
        attributes={"user:a": {"x": 1}, "group:g": {}},
        memberships={("group:g", "user:a")},
        bindings={("user:a", "global", "viewer"): (7, None)},
    )
    d = doc(
        """
subjects: [{id: user:a, attributes: {x: 2}}]
groups: [{id: group:g, members: [user:b]}]
bindings: [{subject: user:b, role: viewer}]
"""
    )
    plan = plan_import(d, stored, replace=True, now=NOW)
    assert [str(c) for c in plan.changes()] == [
        'set-attributes user:a: {"x": 2}',
        "add-member group:g: user:b",
        "remove-member group:g: user:a",
        "grant user:b: `viewer` in `global`",
        "revoke user:a: `viewer` in `global`",
    ]
    assert plan.new_subjects == ["user:b"]
