"""Store fixtures: every store test runs on SQLite (a temporary file) and on PostgreSQL.

PostgreSQL is the real server on 127.0.0.1:5432 (or $PDP_TEST_PG_URL), in a schema
made for this run and dropped at its end, so runs never collide and leave nothing
behind. When PostgreSQL cannot be reached the PostgreSQL half fails with a message
saying so: it is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.store import migrate
from pdp.store.config import redact
from pdp.store.sql import SqlStore
from pdp.store.validate import RoleCatalog
from tests.store.support import PG_URL, PgSchema, pg_reachable, write_policies

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[PgSchema]:
    """This run's PostgreSQL schema, migrated once; dropped when the run ends."""
    why = pg_reachable()
    if why is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {redact(PG_URL)}: {why}\n"
            "The store suite runs against the real PostgreSQL and is never skipped. Start it "
            "(`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) "
            "or point PDP_TEST_PG_URL at one.",
            pytrace=False,
        )
    schema = PgSchema()
    try:
        store = SqlStore(schema.url(), check_schema=False)
        store.run(migrate.upgrade)
        store.close()
        yield schema
    finally:
        schema.drop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL of an empty, migrated store on `backend`."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'pdp.db'}"
        SqlStore(url).close()  # made and migrated, as PostgreSQL's schema is
        return url
    schema: PgSchema = request.getfixturevalue("pg_schema")
    schema.reset()
    return schema.url().render_as_string(hide_password=False)


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = SqlStore(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policies(tmp_path)


@pytest.fixture
def roles() -> RoleCatalog:
    return RoleCatalog(frozenset({"viewer", "editor", "admin"}), frozenset({"owner"}))
