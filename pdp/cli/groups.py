"""`pdp groups add-member|remove-member|list`: groups of subjects, nested, without cycles."""

from __future__ import annotations

import argparse
from typing import Any

from pdp.cli.common import EXIT_OK, add_json_option, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    actor,
    add_actor_option,
    add_db_option,
    add_store_verb,
    handles_store_errors,
    new_table,
    open_store,
    plain_row,
    print_table,
    print_write,
)
from pdp.store import validate as v

ABOUT = """\
A group is a subject (group:<name>); its members are subjects, groups included.
Roles bound to a group reach every member, through any depth of nesting. A
membership that would make a group contain itself is refused.

examples:
  pdp groups add-member group:eng user:alice user:bob
  pdp groups add-member group:staff group:eng
  pdp groups remove-member group:eng user:bob
  pdp groups list
  pdp groups list group:eng --json
"""


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "groups",
        help="manage group membership (groups may contain groups)",
        description="Manage groups in the store.",
        about=ABOUT,
    )

    a = actions.add_parser("add-member", help="put subjects in a group", epilog=EXIT_CODES)
    a.add_argument("group", metavar="GROUP", help="group:<name>")
    a.add_argument("members", nargs="+", metavar="MEMBER", help="type:id")
    add_actor_option(a)
    add_db_option(a)
    add_json_option(a)
    a.set_defaults(run=_add)

    r = actions.add_parser("remove-member", help="take a subject out of a group", epilog=EXIT_CODES)
    r.add_argument("group", metavar="GROUP")
    r.add_argument("member", metavar="MEMBER")
    add_db_option(r)
    add_json_option(r)
    r.set_defaults(run=_remove)

    ls = actions.add_parser(
        "list", help="list groups, or the members of one group", epilog=EXIT_CODES
    )
    ls.add_argument("group", nargs="?", metavar="GROUP")
    add_db_option(ls)
    add_json_option(ls)
    ls.set_defaults(run=_list)


@handles_store_errors
def _add(args: argparse.Namespace) -> int:
    v.group_key(args.group)
    for m in args.members:
        v.subject_key(m)
    with open_store(args, create=True) as store:
        for m in args.members:
            print_write(store.add_member(args.group, m, created_by=actor(args)), args.json)
    return EXIT_OK


@handles_store_errors
def _remove(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        print_write(store.remove_member(args.group, args.member), args.json)
    return EXIT_OK


@handles_store_errors
def _list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.group:
            members = store.members(args.group)
            if args.json:
                print_json({"group": v.group_key(args.group), "members": list(members)})
            elif members:
                for m in members:
                    out.print(m, markup=False)
            else:
                out.print(f"{args.group} has no members", markup=False)
            return EXIT_OK
        groups = store.groups()
    if args.json:
        print_json([{"group": g, "members": list(ms)} for g, ms in groups.items()])
        return EXIT_OK
    if not groups:
        out.print("no groups", markup=False)
        return EXIT_OK
    table = new_table("group", "members", "")
    for g, ms in groups.items():
        shown = ", ".join(ms[:5]) + (f", … ({len(ms) - 5} more)" if len(ms) > 5 else "")
        plain_row(table, g, str(len(ms)), shown)
    print_table(table)
    return EXIT_OK
