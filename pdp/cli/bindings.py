"""`pdp bindings grant|revoke|list`: who holds which role where, in the store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from pdp.cli.common import EXIT_OK, add_json_option, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    EXIT_ERROR,
    actor,
    add_actor_option,
    add_db_option,
    add_policies_option,
    add_store_verb,
    handles_store_errors,
    iso,
    new_table,
    open_store,
    parse_expiry,
    plain_row,
    print_table,
    print_write,
    role_catalog,
)
from pdp.store import validate as v

EXAMPLES = """\
examples:
  pdp bindings grant user:alice editor --scope tenant/acme
  pdp bindings grant group:auditors viewer --scope folder/7 --expires 30d
  pdp bindings revoke user:alice editor --scope tenant/acme
  pdp bindings list --subject user:alice --json

scopes: global (default), tenant/<t>, or one resource <type>/<id> (reaching what is
below it when requests list it in resource.ancestors).
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "bindings",
        help="grant, revoke and list role bindings in the store",
        description="Manage role bindings in the store (--db, $PDP_DB_URL, or sqlite:///pdp.db).",
        about=EXAMPLES,
    )

    g = actions.add_parser(
        "grant",
        help="give SUBJECT the role ROLE within a scope",
        description="Give SUBJECT (type:id; a group is group:<name>) the role ROLE. The role "
        "must be declared by the policies (derived roles cannot be granted). Granting a "
        "binding that exists reports it and changes nothing.",
        epilog=EXIT_CODES,
    )
    g.add_argument("subject", metavar="SUBJECT", help="type:id, e.g. user:alice or group:eng")
    g.add_argument("role", metavar="ROLE")
    g.add_argument("--scope", default="global", help="global (default), tenant/<t>, <type>/<id>")
    g.add_argument(
        "--expires", metavar="WHEN", help="ISO 8601 time, or a duration from now: 30d, 12h, 2w"
    )
    add_policies_option(g)
    add_actor_option(g)
    add_db_option(g)
    add_json_option(g)
    g.set_defaults(run=_grant)

    r = actions.add_parser(
        "revoke",
        help="remove one binding",
        description="Remove the binding of ROLE to SUBJECT within the scope; an error when "
        "there is none.",
        epilog=EXIT_CODES,
    )
    r.add_argument("subject", metavar="SUBJECT")
    r.add_argument("role", metavar="ROLE")
    r.add_argument("--scope", default="global")
    add_db_option(r)
    add_json_option(r)
    r.set_defaults(run=_revoke)

    ls = actions.add_parser(
        "list",
        help="list bindings, filtered",
        description="List the bindings that match every filter given (held directly; "
        "`pdp subjects show` adds those held through groups).",
        epilog=EXIT_CODES,
    )
    ls.add_argument("--subject", metavar="SUBJECT")
    ls.add_argument("--role", metavar="ROLE")
    ls.add_argument("--scope", metavar="SCOPE")
    ls.add_argument("--active", action="store_true", help="leave out expired bindings")
    add_db_option(ls)
    add_json_option(ls)
    ls.set_defaults(run=_list)


@handles_store_errors
def _grant(args: argparse.Namespace) -> int:
    # Validate everything the user typed before touching the database.
    v.subject_key(args.subject)
    v.scope(args.scope)
    now = datetime.now(UTC)
    expires = v.expiry(parse_expiry(args.expires, now), now)
    roles = role_catalog(args)
    if roles is None:
        return EXIT_ERROR
    roles.check(args.role)
    with open_store(args, create=True) as store:
        result = store.grant(
            args.subject,
            args.role,
            args.scope,
            expires=expires,
            created_by=actor(args),
            roles=roles,
            now=now,
        )
    print_write(result, args.json)
    return EXIT_OK


@handles_store_errors
def _revoke(args: argparse.Namespace) -> int:
    v.subject_key(args.subject)
    v.scope(args.scope)
    with open_store(args) as store:
        result = store.revoke(args.subject, args.role, args.scope)
    print_write(result, args.json)
    return EXIT_OK


@handles_store_errors
def _list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_store(args) as store:
        rows = store.list_bindings(
            subject=args.subject,
            role=args.role,
            scope=args.scope,
            include_expired=not args.active,
            now=now,
        )
    if args.json:
        print_json(
            [
                {
                    "subject": b.subject,
                    "role": b.role,
                    "scope": b.scope,
                    "expires": iso(b.expires),
                    "expired": not b.active(now),
                    "created_by": b.created_by,
                    "created_at": iso(b.created_at),
                }
                for b in rows
            ]
        )
        return EXIT_OK
    if not rows:
        out.print("no bindings match", markup=False)
        return EXIT_OK
    table = new_table("subject", "role", "scope", "expires", "created by", "created at")
    for b in rows:
        expires = iso(b.expires) or "-"
        if not b.active(now):
            expires += " (expired)"
        plain_row(
            table,
            b.subject,
            b.role,
            b.scope,
            expires,
            b.created_by or "-",
            iso(b.created_at) or "-",
        )
    print_table(table)
    out.print(f"{len(rows)} binding(s)", markup=False)
    return EXIT_OK
