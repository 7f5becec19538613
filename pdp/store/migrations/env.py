"""Alembic environment: runs on the connection that `pdp.store.migrate` hands over.

No alembic.ini and no URL here: the Config is built in code, so users only ever run
`pdp db upgrade` (or nothing at all, for a new SQLite file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pdp.store.models import Base


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("pdp's migrations run through pdp.store.migrate, not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
