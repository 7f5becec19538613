"""What the store verbs share: the `--db` option, opening the store, role checks, errors.

Every store verb exits 0 on success, 1 on an error (one line on stderr, never a
traceback) and 2 on wrong usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from pdp.cli.common import EXIT_ERROR, console, err, fail, load_policies, out, print_json
from pdp.lang.errors import render_all
from pdp.lang.times import parse_time
from pdp.store.config import DEFAULT_URL, ENV_URL, resolve_url
from pdp.store.errors import StoreError
from pdp.store.validate import RoleCatalog

if TYPE_CHECKING:
    from pdp.store.sql import SqlStore, WriteResult

EXIT_CODES = "exit codes: 0 success, 1 error (bad input, database unreachable), 2 usage"

_RELATIVE = re.compile(r"^\+?(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def add_store_verb(sub: Any, name: str, *, help: str, description: str, about: str) -> Any:
    """Register a store verb (`pdp NAME ACTION ...`); returns its ACTION subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=about + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p.add_subparsers(dest="action", metavar="ACTION", required=True)


def add_db_option(p: argparse.ArgumentParser) -> None:
    """`--db URL`, falling back to $PDP_DB_URL and then the default SQLite file."""
    p.add_argument(
        "--db",
        metavar="URL",
        help=f"database URL (default: ${ENV_URL}, else {DEFAULT_URL}); "
        "e.g. postgresql+psycopg://user@host:5432/db",
    )


def add_policies_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policies",
        default="policies",
        metavar="DIR",
        help="policies declaring the roles that may be granted (default: policies)",
    )


def add_actor_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--by",
        metavar="NAME",
        help="who makes the change, recorded as created_by (default: $PDP_ACTOR, else cli:$USER)",
    )


def actor(args: argparse.Namespace) -> str:
    """Who is making a change: `--by`, $PDP_ACTOR, or the local user."""
    if getattr(args, "by", None):
        return str(args.by)
    env = os.environ.get("PDP_ACTOR")
    if env:
        return env
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def db_url(args: argparse.Namespace) -> str:
    return resolve_url(getattr(args, "db", None))


def open_store(args: argparse.Namespace, *, create: bool = False) -> SqlStore:
    """The store named by `--db` (imported lazily: SQLAlchemy is not needed by other verbs).

    A new SQLite file is made only for verbs that write (`create`); the others refuse a
    file that is not there, so a mistyped path is an error rather than an empty store.
    """
    from pdp.store.sql import SqlStore

    return SqlStore(db_url(args), auto_create=create)


def role_catalog(args: argparse.Namespace) -> RoleCatalog | None:
    """The grantable roles from `--policies`; None (after printing why) when they don't load."""
    result, _ = load_policies([args.policies], None, "--policies")
    if result is None:
        err.print("  (roles are checked against the policies; pass --policies DIR)", markup=False)
        return None
    if result.policy_set is None:
        err.print(render_all(result.errors), markup=False)
        fail(f"the policies in {args.policies} do not load; roles cannot be checked")
        return None
    return RoleCatalog.from_policy_set(result.policy_set)


def parse_expiry(
    text: str | None, now: datetime | None = None, *, option: str = "--expires"
) -> datetime | None:
    """`--expires`: ISO 8601 (UTC when no zone) or a duration from now: 30d, 12h, 2w, 90m.

    `option` names the flag in messages."""
    if text is None:
        return None
    m = _RELATIVE.match(text.strip())
    if m:
        try:
            delta = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
            return ((now or datetime.now(UTC)) + delta).replace(microsecond=0)
        except (OverflowError, ValueError):  # past year 9999, or more digits than int() takes
            raise ValueError(
                f"{option} `{text}` is too far in the future: the store holds times up to "
                "the year 9999"
            ) from None
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(
            f"`{text}` is not a time; write ISO 8601 (2027-01-01T00:00:00Z) or a duration "
            "such as 30d, 12h, 2w"
        ) from None


def error(message: str) -> int:
    """One line on stderr; user text is escaped so rich does not read it as markup."""
    return fail(message)


def handles_store_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Turn store errors into one clear line and exit code 1, never a traceback."""

    @wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except StoreError as exc:
            return error(exc.message)
        except ValueError as exc:
            return error(str(exc))

    return run


__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "actor",
    "add_actor_option",
    "add_db_option",
    "add_policies_option",
    "db_url",
    "error",
    "handles_store_errors",
    "iso",
    "new_table",
    "open_store",
    "parse_expiry",
    "plain_row",
    "print_table",
    "print_write",
    "role_catalog",
]


def iso(t: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, as the bindings document writes times."""
    if t is None:
        return None
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_write(result: WriteResult, as_json: bool) -> None:
    """A write's outcome: one line for people, or JSON for tools."""
    if as_json:
        print_json(
            {
                "changed": result.changed,
                "revision": result.revision,
                "message": result.message,
                "changes": [c.to_json() for c in result.changes],
            }
        )
    else:
        out.print(result.message, markup=False)


def plain_row(table: Table, *values: str) -> None:
    """Add a row whose cells are shown as typed (no rich markup in user data)."""
    table.add_row(*(Text(v) for v in values))


def print_table(table: Table) -> None:
    """Print a table at its natural width: piped output is not cut to 80 columns."""
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update(max_width=10_000)).maximum
    console(width=max(out.width, natural)).print(table)


def new_table(*columns: str) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in columns:
        table.add_column(col)
    return table
