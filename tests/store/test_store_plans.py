"""The lookup's query plan: index probes only, however the planners are tempted.

Each case here once cost milliseconds per lookup (see docs/store.md): a scope-only
index, a join that SQLite answered with a Bloom filter over all bindings once ANALYZE
had run, and PostgreSQL's fixed estimate for recursive CTEs choosing a sequential scan.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.store.sql import SqlStore, lookup_sql


def populate(store: SqlStore, n: int = 30_000) -> None:
    rows = tuple(
        RoleBinding(
            f"user:u{i % 3000}" if i % 10 else f"group:g{i % 300}",
            ("viewer", "editor", "admin")[i % 3],
            ("global", f"tenant/t{i % 50}", f"folder/f{i}", f"document/d{i}")[i % 4],
        )
        for i in range(n)
    )
    groups = {
        f"group:g{g}": frozenset(f"user:u{u}" for u in range(g, 3000, 300)) for g in range(300)
    }
    store.import_bindings(Bindings(groups=groups, bindings=rows))


def plan(store: SqlStore) -> str:
    where = ("global", "tenant/t7", "folder/f1", "folder/f7", "document/d7")
    now = datetime.now(UTC)
    if store.is_postgresql:
        sql = "EXPLAIN " + lookup_sql(len(where), "postgresql", "format")
        stamp: object = now
    else:
        sql = "EXPLAIN QUERY PLAN " + lookup_sql(len(where), "sqlite", "qmark")
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql, ("user:u7", *where, stamp)).all()
    return "\n".join(str(r[-1]) for r in rows)


def test_the_lookup_probes_indexes_only(store: SqlStore) -> None:
    populate(store)
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE"))  # the statistics that once misled both planners
    shown = plan(store)
    if store.is_postgresql:
        assert "Seq Scan on pdp_bindings" not in shown, shown
        assert "Seq Scan on pdp_memberships" not in shown, shown
        assert "uq_pdp_bindings_subject_scope_role" in shown, shown
    else:
        assert "BLOOM FILTER" not in shown, shown
        assert "SCAN b" not in shown, shown
        assert "sqlite_autoindex_pdp_bindings_1" in shown, shown
        assert "ix_pdp_memberships_member" in shown, shown
    assert store.roles_for("user:u7", ["document/d7"], datetime.now(UTC)) == {"editor"}
