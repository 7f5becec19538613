"""`pdp check`: evaluate AuthZEN-shaped requests offline against policies and bindings."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from pdp.cli.common import (
    EXIT_DENY,
    EXIT_ERROR,
    EXIT_OK,
    err,
    existing_file,
    fail,
    load_policies,
    out,
    parse_now,
    print_explanation,
    print_json,
    read_input,
    safe,
)
from pdp.engine.bindings import Bindings, RoleSource
from pdp.engine.compile import compile_policy_set
from pdp.engine.decision import Decision
from pdp.engine.request import RequestError, parse_evaluations
from pdp.evaluation import evaluate
from pdp.lang.errors import render_all
from pdp.store.document import DocumentError, load_bindings_file
from pdp.store.errors import StoreError

if TYPE_CHECKING:
    from pdp.store.sql import SqlStore

EXAMPLE = """\
request (JSON; `-` reads stdin):
  {"subject":  {"type": "user", "id": "alice", "properties": {"tenant": "acme"}},
   "action":   {"name": "read"},
   "resource": {"type": "document", "id": "42", "properties": {"tenant": "acme"},
                "ancestors": ["folder/7"]},
   "context":  {"ip": "10.1.2.3"}}
  or {"subject": ..., "evaluations": [{"action": ...}, ...]} with shared defaults;
  an unknown key is an error

exit codes: 0 all allowed, 1 bad input or invalid policies, 2 usage (also a
--request or --bindings file that does not exist), 3 a deny
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="decide a request offline and print the decision as JSON",
        description="Evaluate one request, or a batch with `evaluations`, against policies "
        "and a bindings file (or the store, with --db), and print the decision(s) as JSON.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policies", required=True, metavar="DIR", help="policy directory or file")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--bindings", metavar="FILE", type=existing_file, help="bindings YAML file")
    source.add_argument(
        "--db",
        metavar="URL",
        help="read roles and attributes from the store at URL instead (e.g. sqlite:///pdp.db)",
    )
    p.add_argument(
        "--request", required=True, metavar="FILE", type=existing_file, help="request JSON, or -"
    )
    p.add_argument("--schema", metavar="FILE", help="attribute schema to validate policies with")
    p.add_argument("--now", metavar="TIME", help="evaluate as of this ISO 8601 time")
    p.add_argument(
        "--explain", action="store_true", help="show every candidate rule and why it applied"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result, code = load_policies([args.policies], args.schema, "--policies")
    if result is None:
        return code
    if result.policy_set is None:
        err.print(render_all(result.errors), markup=False)
        return EXIT_ERROR
    policy = compile_policy_set(result.policy_set)
    bindings: RoleSource = Bindings()
    if not args.db:
        try:
            # Derived roles come from conditions; a binding cannot grant one.
            roles = {r.name.name for r in result.policy_set.roles}
            bindings = load_bindings_file(args.bindings, roles) if args.bindings else Bindings()
        except DocumentError as exc:
            return fail(f"bad bindings file:\n{exc}")
    try:
        data = json.loads(read_input(args.request), parse_constant=_not_a_number)
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"cannot read the request {args.request}: {exc}")
    except json.JSONDecodeError as exc:
        return fail(f"request is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    except ValueError as exc:  # NaN or Infinity; an integer of more than 4,300 digits
        too_long = "integer string conversion" in str(exc)
        return fail(
            "request: an integer of more than 4,300 digits" if too_long else f"request: {exc}"
        )
    except RecursionError:
        return fail("request: nested too deeply")
    try:
        now = parse_now(args.now)
    except ValueError:
        return fail(f"--now: `{args.now}` is not an ISO 8601 time")
    try:
        requests, batch = parse_evaluations(data)
    except RequestError as exc:
        return fail(f"bad request: {exc}")
    store = None
    if args.db:
        try:
            bindings = store = open_db(args.db)
        except StoreError as exc:
            return fail(exc.message)
    try:
        decisions = evaluate(policy, requests, bindings, now=now, explain=args.explain)
    except RecursionError:
        # The server limits nesting when it reads a request (limits.max_depth); here a
        # list of lists hundreds deep can still reach a comparison.
        return fail("request: a value is nested too deeply to compare")
    finally:
        if store is not None:
            store.close()
    if args.explain:
        for request, decision in zip(requests, decisions, strict=True):
            _explain(request.subject.key, request.resource, decision)
    else:
        if batch:
            # Which evaluation each decision answers: two `delete`s on different
            # documents must be told apart.
            shown = [
                {
                    **d.to_json(),
                    "subject": r.subject.key,
                    "resource": f"{r.resource.type}/{r.resource.id}",
                }
                for r, d in zip(requests, decisions, strict=True)
            ]
            print_json(shown)
        else:
            print_json(decisions[0].to_json())
    return EXIT_OK if all(d.allowed for d in decisions) else EXIT_DENY


def _not_a_number(name: str) -> object:
    # The server refuses them too: a policy comparing NaN gets no answer.
    raise ValueError(f"`{name}` is not a number JSON allows")


def _explain(subject: str, resource: Any, d: Decision) -> None:
    verdict = "[green]ALLOW[/]" if d.allowed else "[red]DENY[/]"
    out.print(
        f"{verdict} {safe(subject)} → {safe(d.action)} "
        f"{safe(resource.type)}/{safe(resource.id)}  "
        f"(policy_version {d.policy_version})"
    )
    print_explanation(d)
    out.print()


def open_db(url: str) -> SqlStore:
    """The SQL store as an uncached role source (one query per lookup)."""
    from pdp.store.sql import SqlStore  # lazily: only `--db` needs SQLAlchemy

    return SqlStore(url, auto_create=False)  # reads only: a missing file is an error
