"""`pdp db upgrade|current`: the store's schema migrations."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from pdp.cli.common import EXIT_OK, add_json_option, out, print_json
from pdp.cli.dbopts import EXIT_CODES, add_db_option, add_store_verb, db_url, handles_store_errors
from pdp.store.errors import SchemaNotReady

ABOUT = """\
A new SQLite database is created and migrated on first use; PostgreSQL (and any
database made by an older pdp) is migrated explicitly with `pdp db upgrade`.

examples:
  pdp db upgrade --db postgresql+psycopg://pdp@db.internal:5432/pdp
  PDP_DB_URL=sqlite:///pdp.db pdp db current --json
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "db",
        help="migrate the store's schema and show its version",
        description="Schema migrations of the store (alembic, shipped with pdp).",
        about=ABOUT,
    )
    u = actions.add_parser(
        "upgrade", help="migrate the database to this pdp's schema", epilog=EXIT_CODES
    )
    add_db_option(u)
    add_json_option(u)
    u.set_defaults(run=_upgrade)
    c = actions.add_parser(
        "current", help="show the schema version and store revision", epilog=EXIT_CODES
    )
    add_db_option(c)
    add_json_option(c)
    c.set_defaults(run=_current)


@handles_store_errors
def _upgrade(args: argparse.Namespace) -> int:
    from pdp.store import migrate
    from pdp.store.sql import SqlStore

    with SqlStore(db_url(args), check_schema=False) as store:
        before, after = store.run(migrate.upgrade)
        url = store.url
    if args.json:
        print_json({"url": url, "from": before, "to": after, "head": migrate.head()})
    elif before == after:
        out.print(f"{url}: already at schema {after} (current)", markup=False)
    else:
        out.print(f"{url}: migrated from {before or 'nothing'} to schema {after}", markup=False)
    return EXIT_OK


@handles_store_errors
def _current(args: argparse.Namespace) -> int:
    from pdp.store import migrate
    from pdp.store.sql import SqlStore

    with SqlStore(db_url(args), check_schema=False) as store:
        if store.dialect == "sqlite":
            # First use creates a SQLite store, as every other verb would.
            with contextlib.suppress(SchemaNotReady):
                store.ensure_schema()
        have = store.run(migrate.current)
        head = migrate.head()
        revision = store.revision() if have == head else None
        url = store.url
    if args.json:
        print_json(
            {
                "url": url,
                "schema": have,
                "head": head,
                "current": have == head,
                # Migrated by a newer pdp: upgrade pdp, not the database.
                "newer": have is not None and not migrate.known(have),
                "revision": revision,
            }
        )
        return EXIT_OK
    if have is None:
        out.print(
            f"{url}: no pdp schema (run `pdp db upgrade`); this pdp needs {head}", markup=False
        )
    elif not migrate.known(have):
        out.print(
            f"{url}: schema {have}, from a newer pdp; this one knows schemas up to {head} "
            "(upgrade pdp; do not downgrade the database)",
            markup=False,
        )
    elif have != head:
        out.print(
            f"{url}: schema {have}, this pdp needs {head} (run `pdp db upgrade`)", markup=False
        )
    else:
        out.print(f"{url}: schema {have} (current), store revision {revision}", markup=False)
    return EXIT_OK
