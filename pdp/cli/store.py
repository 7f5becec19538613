"""`pdp store import|export`: the whole store as the YAML that `pdp check --bindings` reads."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pdp.cli.common import EXIT_OK, add_json_option, err, out, print_json
from pdp.cli.dbopts import (
    EXIT_CODES,
    EXIT_ERROR,
    actor,
    add_actor_option,
    add_db_option,
    add_policies_option,
    add_store_verb,
    error,
    handles_store_errors,
    open_store,
    role_catalog,
)
from pdp.store.document import DocumentError, dump_bindings, load_document, parse_document

ABOUT = """\
The file format is the bindings document (subjects, groups, bindings) that
`pdp check --bindings` and policy test suites read; see docs/store.md.

import is one transaction and idempotent: importing the same file again changes
nothing. By default it merges (adds and updates, never removes); --replace also
removes what the file does not list. --dry-run prints what would change.

examples:
  pdp store export > bindings.yaml
  pdp store import bindings.yaml --dry-run
  pdp store import bindings.yaml --replace
"""

# libyaml, when PyYAML was built with it, writes large documents ~10x faster.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

SHOW_AT_MOST = 200


def register(sub: Any) -> None:
    actions = add_store_verb(
        sub,
        "store",
        help="import and export the whole store as a bindings YAML document",
        description="Move the store's contents in and out as the bindings YAML document.",
        about=ABOUT,
    )
    i = actions.add_parser(
        "import",
        help="make the store hold a bindings document (one transaction)",
        description="Import FILE (`-` for stdin) into the store in one transaction. Every "
        "problem (a role the policies do not declare, a group cycle across file and store) "
        "is reported and nothing changes. Bindings already expired are skipped.",
        epilog=EXIT_CODES,
    )
    i.add_argument("file", metavar="FILE", help="bindings YAML (or JSON), or - for stdin")
    i.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    i.add_argument("--replace", action="store_true", help="also remove what the file does not list")
    add_policies_option(i)
    add_actor_option(i)
    add_db_option(i)
    add_json_option(i)
    i.set_defaults(run=_import)

    e = actions.add_parser(
        "export",
        help="print the store as a bindings document",
        description="Write the store as YAML (stdout, or -o FILE). Expired bindings are "
        "left out unless --include-expired.",
        epilog=EXIT_CODES,
    )
    e.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    e.add_argument("--include-expired", action="store_true", help="keep expired bindings")
    e.add_argument(
        "--format",
        choices=("yaml", "json"),
        default="yaml",
        help="yaml (default) or json: the same document, much faster to read for big stores",
    )
    add_db_option(e)
    e.set_defaults(run=_export)


@handles_store_errors
def _import(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return error(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}")
    try:
        data = load_document(text, source)
    except DocumentError as exc:
        return _refused(exc)
    roles = role_catalog(args)
    if roles is None:
        return EXIT_ERROR
    try:
        doc, places = parse_document(data, source, roles, for_import=True)
    except DocumentError as exc:
        return _refused(exc)
    with open_store(args, create=True) as store:
        result = store.import_bindings(
            doc,
            replace=args.replace,
            dry_run=args.dry_run,
            roles=roles,
            created_by=actor(args),
            places=places,
        )
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "applied": result.changed,
                "revision": result.revision,
                "summary": result.message,
                "changes": [c.to_json() for c in result.changes],
                "notes": list(result.notes),
            }
        )
        return EXIT_OK
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    for c in result.changes[:SHOW_AT_MOST]:
        out.print(("would " if args.dry_run else "") + str(c), markup=False)
    if len(result.changes) > SHOW_AT_MOST:
        out.print(f"… and {len(result.changes) - SHOW_AT_MOST} more (--json lists all)")
    tail = f" (revision {result.revision})" if result.changed else ""
    out.print(result.message + tail, markup=False)
    return EXIT_OK


def _refused(exc: DocumentError) -> int:
    """Every problem of the file, then one line saying nothing was imported."""
    err.print(str(exc), markup=False)
    return error(f"{exc.source}: {len(exc.problems)} problem(s); nothing was imported")


@handles_store_errors
def _export(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        doc = store.export(include_expired=args.include_expired)
        revision = store.revision()
    if args.format == "json":
        header = ""
        body = json.dumps(dump_bindings(doc), indent=1, ensure_ascii=False) + "\n"
    else:
        header = f"# pdp store export, store revision {revision}\n"
        body = yaml.dump(
            dump_bindings(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )
    if args.output:
        Path(args.output).write_text(header + body, encoding="utf-8")
        err.print(
            f"wrote {len(doc.bindings)} binding(s), {len(doc.groups)} group(s), "
            f"{len(doc.subjects)} subject(s) to {args.output}",
            markup=False,
        )
    else:
        sys.stdout.write(header + body)
    return EXIT_OK
