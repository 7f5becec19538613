"""Schema migrations: the models match them, SQLite is created on first use, PG is explicit."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pdp.store import migrate
from pdp.store.errors import SchemaNotReady
from pdp.store.models import Base
from pdp.store.sql import SqlStore
from tests.store.support import PgSchema


def test_the_models_match_the_migrations(store: SqlStore) -> None:
    """A model change without a migration (or the reverse) fails here."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
    assert store.run(migrate.current) == migrate.head()


def test_a_new_sqlite_file_is_created_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.db"
    path.parent.mkdir()
    with SqlStore(f"sqlite:///{path}") as store:
        assert path.exists()
        assert store.run(migrate.current) == migrate.head()
        assert store.revision() == 0


def test_an_unknown_sqlite_database_is_not_touched(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x INT)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaNotReady, match="no pdp schema; run `pdp db upgrade"):
        SqlStore(f"sqlite:///{path}")


def test_postgresql_is_migrated_explicitly() -> None:
    schema = PgSchema()
    try:
        url = schema.url()
        with pytest.raises(SchemaNotReady, match="has no pdp schema; run `pdp db upgrade --db"):
            SqlStore(url)
        with SqlStore(url, check_schema=False) as store:
            assert store.run(migrate.upgrade) == (None, migrate.head())
            assert store.run(migrate.upgrade) == (migrate.head(), migrate.head())
        with SqlStore(url) as store:
            assert store.revision() == 0
    finally:
        schema.drop()
