"""`pdp subjects set|show`: what the PDP knows about a subject without being told."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pdp.cli.common import EXIT_OK, add_json_option, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    add_db_option,
    add_store_verb,
    handles_store_errors,
    iso,
    new_table,
    open_store,
    plain_row,
    print_table,
    print_write,
)
from pdp.engine.bindings import RoleBinding
from pdp.store import validate as v

TRUSTED = """\
Stored attributes are trusted: the PDP adds them to every request's subject, and a
request may add properties but never override a stored one (a caller cannot claim
another tenant).

examples:
  pdp subjects set user:alice tenant=acme department=eng level=3
  pdp subjects set user:alice --unset department
  pdp subjects show user:alice --json

values are JSON when they parse as JSON (3, true, ["a","b"], "quoted"), text otherwise.
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "subjects",
        help="set and show stored (trusted) subject attributes",
        description="Manage the attributes the store keeps for users, services and groups.",
        about=TRUSTED,
    )

    s = actions.add_parser(
        "set",
        help="set attributes of a subject (merged into what is stored)",
        description="Set attributes of SUBJECT: each KEY=VALUE is merged into the stored "
        "attributes (--replace drops the others first); --unset removes a key.",
        epilog=EXIT_CODES,
    )
    s.add_argument("subject", metavar="TYPE:ID")
    s.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove KEY")
    s.add_argument("--replace", action="store_true", help="replace all attributes")
    add_db_option(s)
    add_json_option(s)
    s.set_defaults(run=_set)

    sh = actions.add_parser(
        "show",
        help="show a subject's attributes, groups and bindings",
        description="Show what the store knows about SUBJECT: attributes, groups (direct and "
        "nested), members (for a group), and bindings held directly and through groups.",
        epilog=EXIT_CODES,
    )
    sh.add_argument("subject", metavar="TYPE:ID")
    add_db_option(sh)
    add_json_option(sh)
    sh.set_defaults(run=_show)


def parse_pair(text: str) -> tuple[str, Any]:
    """`key=value` → (key, value); the value is JSON when it parses as JSON, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"`{text}` is not KEY=VALUE")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


@handles_store_errors
def _set(args: argparse.Namespace) -> int:
    v.subject_key(args.subject)
    values = dict(parse_pair(p) for p in args.pairs)
    if not values and not args.unset and not args.replace:
        raise ValueError("nothing to set: give KEY=VALUE pairs, --unset KEY or --replace")
    with open_store(args, create=True) as store:
        result = store.set_attributes(args.subject, values, args.unset, replace=args.replace)
    print_write(result, args.json)
    return EXIT_OK


def _binding_json(b: RoleBinding) -> dict[str, Any]:
    return {
        "subject": b.subject,
        "role": b.role,
        "scope": b.scope,
        "expires": iso(b.expires),
        "created_by": b.created_by,
        "created_at": iso(b.created_at),
    }


@handles_store_errors
def _show(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        info = store.subject_info(args.subject)
    if args.json:
        print_json(
            {
                "subject": info.key,
                "stored": info.exists,
                "attributes": dict(info.attributes),
                "groups": list(info.groups),
                "all_groups": list(info.all_groups),
                "members": list(info.members),
                "bindings": [_binding_json(b) for b in info.bindings],
                "inherited_bindings": [_binding_json(b) for b in info.inherited],
            }
        )
        return EXIT_OK
    if not info.exists:
        out.print(f"{info.key}: not in the store (no attributes, groups or bindings)", markup=False)
        return EXIT_OK
    out.print(info.key, markup=False, style="bold")
    attrs = json.dumps(dict(info.attributes), sort_keys=True) if info.attributes else "none"
    out.print(f"  attributes: {attrs}", markup=False)
    out.print(f"  groups:     {', '.join(info.groups) or 'none'}", markup=False)
    nested = [g for g in info.all_groups if g not in info.groups]
    if nested:
        out.print(f"  through them: {', '.join(nested)}", markup=False)
    if info.members:
        out.print(f"  members:    {', '.join(info.members)}", markup=False)
    if info.bindings or info.inherited:
        table = new_table("role", "scope", "expires", "held through")
        for b in (*info.bindings, *info.inherited):
            via = "-" if b.subject == info.key else b.subject
            plain_row(table, b.role, b.scope, iso(b.expires) or "-", via)
        print_table(table)
    else:
        out.print("  bindings:   none", markup=False)
    return EXIT_OK
