"""Schema migrations, run programmatically: `pdp db upgrade`, `pdp db current`.

The alembic Config is built in code with the package's own `migrations/` directory
and the caller's connection, so nobody needs an alembic.ini or a second URL.
"""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from pdp.store.config import redact
from pdp.store.errors import SchemaNotReady

SCRIPT_LOCATION = "pdp.store:migrations"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@cache
def head() -> str:
    """The newest schema revision this version of pdp knows."""
    heads = _scripts().get_heads()
    # INVARIANT: the migrations form one line (no branches).
    assert len(heads) == 1, heads
    return heads[0]


def known(revision: str) -> bool:
    """Whether `revision` is one of this pdp's migrations (not one of a newer pdp's)."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # alembic: "Can't locate revision identified by ..."
        return False


def newer_message(url: str, have: str) -> str:
    """Why a database at an unknown (newer) revision is left alone, and what to do."""
    return (
        f"the database at {url} was migrated by a newer pdp (schema {have}); this pdp "
        f"knows schemas up to {head()}: upgrade pdp to use it (do not downgrade the database)"
    )


def current(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a database never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: Engine) -> bool:
    """No tables at all: a new database that may be migrated without asking."""
    with engine.connect() as conn:
        return not inspect(conn).get_table_names()


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Migrate to `target` in one transaction; returns (revision before, revision after)."""
    before = current(engine)
    if before is not None and not known(before):
        raise SchemaNotReady(newer_message(redact(engine.url), before))
    with engine.begin() as conn:
        command.upgrade(_config(conn), target)
    return before, current(engine)
