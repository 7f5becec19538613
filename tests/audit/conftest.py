"""Audit fixtures: SQL tests run on SQLite and on the real PostgreSQL (never skipped)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.support import PG_URL, PgSchema, pg_reachable


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[PgSchema]:
    why = pg_reachable()
    if why is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL}: {why}\nThe audit SQL tests run against "
            "the real PostgreSQL and are never skipped; start it or set PDP_TEST_PG_URL.",
            pytrace=False,
        )
    schema = PgSchema()
    try:
        yield schema
    finally:
        schema.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for the audit table: a SQLite file, or this run's PG schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    schema: PgSchema = request.getfixturevalue("pg_schema")
    return schema.url()


@pytest.fixture
def table() -> str:
    """A table name of its own for each test (the PG schema is shared by the run)."""
    return "audit_" + secrets.token_hex(4)
