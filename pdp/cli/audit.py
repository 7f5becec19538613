"""`pdp audit`: search, show, stats, tail and verify the decision audit log.

Every sub-command reads the file log (`--log DIR`, default `pdp-audit`, or one
`.jsonl` file) or the SQL table (`--db URL`). Filters are `FIELD=VALUE` terms.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from rich.table import Table

from pdp.audit.explain import NOT_BY_POLICY, Rederived, rederive
from pdp.audit.query import FIELDS, Filter, Problem, QueryError, Stats, make_filter, ranked
from pdp.audit.read import AuditSource, JsonlSource, open_source
from pdp.audit.record import DecisionRecord, format_time
from pdp.audit.sink import SinkError
from pdp.audit.verify import describe, verify
from pdp.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    add_json_option,
    console,
    err,
    fail,
    out,
    print_explanation,
    print_json,
    safe,
)

DEFAULT_LOG = "pdp-audit"
ENV_LOG = "PDP_AUDIT_LOG"
ENV_DB = "PDP_AUDIT_DB"

FILTER_HELP = "filters, FIELD=VALUE (a field given twice matches either value):\n" + "\n".join(
    f"  {name:<17} {text}" for name, text in FIELDS.items()
)
TIME_HELP = """\
times: a duration back from now (30s, 15m, 2h, 7d, 2w), `now`, or ISO 8601
(2026-11-26, 2026-11-26T12:00:00Z; UTC when no zone is given)"""
EXIT_HELP = """\
exit codes: 0 success; 1 the log cannot be read, a decision is not found, or
(verify) a chain is broken; 2 bad usage: an unknown field, a bad time or cursor"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="search, show, count, follow and verify recorded decisions",
        description="Review the decision audit log: the JSON Lines files the server writes "
        f"(--log, default ./{DEFAULT_LOG}/) or the SQL table (--db).",
        epilog="examples:\n"
        "  pdp audit search subject=user:alice decision=deny --since 2h\n"
        "  pdp audit show 0193a1b2-...\n"
        "  pdp audit stats --since 7d\n"
        "  pdp audit tail action=delete\n"
        "  pdp audit verify --db postgresql://pdp@db/pdp\n\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="audit_verb", metavar="COMMAND", required=True)

    s = _sub(verbs, "search", "find decisions, newest first, a page at a time")
    _filters(s)
    s.add_argument("--limit", type=int, default=50, metavar="N", help="records per page (50)")
    s.add_argument("--cursor", metavar="TOKEN", help="the next page: the token a search printed")
    s.set_defaults(run=run_search)

    s = _sub(verbs, "show", "one decision in full, and why, re-derived when possible")
    s.add_argument("decision_id", metavar="DECISION_ID")
    s.add_argument(
        "--policies", default="policies", metavar="DIR", help="policies to re-derive with"
    )
    s.add_argument("--schema", metavar="FILE", help="attribute schema for the policies")
    s.set_defaults(run=run_show)

    s = _sub(verbs, "stats", "counts by decision, action, resource type and rule")
    _filters(s)
    s.add_argument("--top", type=int, default=10, metavar="N", help="top denied subjects and rules")
    s.set_defaults(run=run_stats)

    s = _sub(verbs, "tail", "follow new decisions as they are recorded (Ctrl-C stops)")
    _filters(s, time_range=False)
    s.add_argument(
        "-n", "--lines", type=int, default=10, metavar="N", help="recent ones first (10)"
    )
    s.add_argument("--count", type=int, metavar="N", help="stop after N new records")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long")
    s.add_argument("--poll", type=float, default=0.25, metavar="SECONDS", help=argparse.SUPPRESS)
    s.set_defaults(run=run_tail)

    s = _sub(verbs, "verify", "check the hash chain; name the first record where it breaks")
    _filters(s, terms=False)
    s.set_defaults(run=run_verify)


def _sub(verbs: Any, name: str, text: str) -> argparse.ArgumentParser:
    # Each verb's help lists what it takes: show takes an id, verify only a time range.
    takes = {"show": [], "verify": [TIME_HELP]}.get(name, [FILTER_HELP, TIME_HELP])
    p: argparse.ArgumentParser = verbs.add_parser(
        name,
        help=text,
        description=text[0].upper() + text[1:] + ".",
        epilog="\n\n".join([*takes, EXIT_HELP]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    # `--path` and `--url` as well: the names of the server's `audit.path` and `audit.url`.
    where.add_argument(
        "--log",
        "--path",
        dest="log",
        metavar="PATH",
        help=f"audit directory or one .jsonl file (default ${ENV_LOG}, else ./{DEFAULT_LOG})",
    )
    where.add_argument(
        "--db",
        "--url",
        dest="db",
        metavar="URL",
        help=f"the SQL audit table's database (${ENV_DB})",
    )
    p.add_argument("--table", default="pdp_audit", metavar="NAME", help="SQL table (pdp_audit)")
    add_json_option(p)
    return p


def _filters(p: argparse.ArgumentParser, *, terms: bool = True, time_range: bool = True) -> None:
    if terms:
        p.add_argument("terms", nargs="*", metavar="FIELD=VALUE", help="filters (see below)")
    if time_range:
        p.add_argument("--since", metavar="TIME", help="from this long ago, e.g. 2h")
        p.add_argument("--from", dest="start", metavar="TIME", help="from this time")
        p.add_argument("--to", dest="end", metavar="TIME", help="up to (not including) this time")


# --- shared steps -------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _open(args: argparse.Namespace) -> AuditSource:
    db = args.db or (None if args.log else os.environ.get(ENV_DB))
    log = args.log or os.environ.get(ENV_LOG) or DEFAULT_LOG
    try:
        return open_source(log=log, db=db, table=args.table)
    except FileNotFoundError as exc:
        raise _Stop(fail(str(exc))) from None
    except SinkError as exc:
        raise _Stop(fail(str(exc))) from None


def _filter(args: argparse.Namespace) -> Filter:
    try:
        return make_filter(
            getattr(args, "terms", ()),
            since=getattr(args, "since", None),
            start=getattr(args, "start", None),
            end=getattr(args, "end", None),
        )
    except QueryError as exc:
        raise _Stop(_usage(str(exc))) from None


def _usage(message: str) -> int:
    fail(message)
    return EXIT_USAGE


def _warn(problems: list[Problem]) -> None:
    for p in problems[:20]:
        err.print(f"[yellow]warning[/]: {safe(str(p))}; skipped")
    if len(problems) > 20:
        err.print(f"[yellow]warning[/]: {len(problems) - 20} more lines skipped")


def _guard(fn: Any) -> Any:
    """One-line errors for what goes wrong while reading; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            code: int = fn(args)
            return code
        except _Stop as stop:
            return stop.code
        except QueryError as exc:
            return _usage(str(exc))
        except SinkError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"cannot read {exc.filename or 'the audit log'}: {exc.strerror}")

    return run


# --- search -------------------------------------------------------------------------------


@_guard
def run_search(args: argparse.Namespace) -> int:
    flt = _filter(args)
    source = _open(args)
    try:
        page = source.search(flt, args.limit, args.cursor)
    finally:
        source.close()
    _warn(page.problems)
    if args.json:
        print_json(
            {
                "records": [r.to_json() for r in page.records],
                "next_cursor": page.next_cursor,
                "problems": [str(p) for p in page.problems],
            }
        )
        return EXIT_OK
    if not page.records:
        out.print("no matching decisions")
        return EXIT_OK
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("decision", no_wrap=True)
    for col in ("subject", "action", "resource", "reasons", "caller"):
        table.add_column(col, overflow="fold")
    table.add_column("decision_id", no_wrap=True)
    for r in page.records:
        table.add_row(
            format_time(r.time_us)[:19].replace("T", " "),
            _verdict(r.allowed),
            safe(_who(r)),
            safe(r.action or "-"),
            safe(_what(r)),
            safe(", ".join(x.rule for x in r.reasons) or _refusal(r)),
            safe(r.caller or "-"),
            r.decision_id,
        )
    _print_wide(table)
    if page.next_cursor:
        out.print(f"more: add --cursor {page.next_cursor}", markup=False)
    return EXIT_OK


def _print_wide(table: Table) -> None:
    # In a terminal the table fits its width; piped (to less, a file) the rows stay whole.
    if out.is_terminal:
        out.print(table)
    else:
        console(file=out.file, width=250).print(table)


def _verdict(allowed: bool) -> str:
    return "[green]allow[/]" if allowed else "[red]deny[/]"


# --- show ---------------------------------------------------------------------------------


@_guard
def run_show(args: argparse.Namespace) -> int:
    source = _open(args)
    try:
        record, problems = source.get(args.decision_id)
    finally:
        source.close()
    _warn(problems)
    if record is None:
        return fail(
            f"no decision `{args.decision_id}` in {source.description}; it may be in another "
            "log (--log, --db), an allowed decision left out by audit.sample_allowed, or "
            "older than what is kept"
        )
    again = _rederive(record, args)
    if args.json:
        print_json({"record": record.to_json(), "rederived": _rederived_json(again)})
        return EXIT_OK
    _print_record(record)
    out.print()
    if again.decision is None:
        out.print(f"[bold]explanation[/]: cannot re-derive: {safe(again.why_not)}")
        return EXIT_OK
    d = again.decision
    same = "matches the record" if again.matches else "[bold red]differs from the record[/]"
    out.print(f"[bold]explanation[/], re-derived: {_verdict(d.allowed)} ({same})")
    print_explanation(d)
    for note in again.notes:
        out.print(f"  note: {safe(note)}")
    return EXIT_OK


def _rederive(record: DecisionRecord, args: argparse.Namespace) -> Rederived:
    from pdp.engine.compile import compile_policy_set
    from pdp.lang.errors import PolicyLoadError
    from pdp.lang.load import load_paths
    from pdp.lang.schema import load_schema

    try:
        schema = load_schema(args.schema) if args.schema else None
        loaded = load_paths([args.policies], schema)
    except (OSError, PolicyLoadError) as exc:
        return Rederived(None, f"the policies at {args.policies} cannot be loaded ({exc})")
    if loaded.policy_set is None:
        return Rederived(
            None, f"the policies at {args.policies} have errors (`pdp validate` shows them)"
        )
    policy = compile_policy_set(loaded.policy_set)
    return rederive(record, policy, args.policies)


def _rederived_json(again: Rederived) -> dict[str, Any]:
    if again.decision is None:
        return {"available": False, "why_not": again.why_not}
    d = again.decision
    return {
        "available": True,
        "matches": again.matches,
        "decision": "allow" if d.allowed else "deny",
        "reasons": list(d.reasons),
        "diagnostics": [x.to_json() for x in d.diagnostics],
        "trace": [
            {
                "rule": t.rule_id,
                "where": t.where,
                "effect": t.effect,
                "role": t.role,
                "condition": t.condition,
                "applied": t.applied,
            }
            for t in d.trace
        ],
        "notes": again.notes,
    }


def _print_record(r: DecisionRecord) -> None:
    rows: list[tuple[str, str]] = [
        ("decision", _verdict(r.allowed)),
        ("decision_id", r.decision_id),
        ("time", format_time(r.time_us)),
        ("caller", safe(r.caller or "-")),
    ]
    # Authentication and the HTTP request come before the decision's own fields: they
    # are separate steps, and a failed authentication means there was no evaluation.
    if r.http is not None:
        rows.append(("http request", safe(_http_text(r.http))))
    if r.authn is not None:
        rows.append(("authentication", safe(_authn_text(r.authn))))
    rows += [
        ("subject", safe(r.subject if r.subject_type else "-")),
        ("roles used", safe(", ".join(r.roles) or "-")),
        ("action", safe(r.action)),
        ("resource", safe(r.resource)),
        (
            "reasons",
            safe(", ".join(f"{x.rule} ({x.at})" if x.at else x.rule for x in r.reasons))
            or (
                "default deny: no permit applied"
                if not r.allowed and not any(d.code in NOT_BY_POLICY for d in r.diagnostics)
                else "-"
            ),
        ),
    ]
    rows += [
        ("diagnostic", safe(f"[{d.code}] {d.rule_id or ''} {d.message}".replace("  ", " ")))
        for d in r.diagnostics
    ]
    rows += [
        ("policy_version", r.policy_version),
        ("bindings_version", safe(r.bindings_version or "-")),
        ("latency", f"{r.latency_us} µs"),
    ]
    for name, value in (
        ("subject properties", r.subject_properties),
        ("action properties", r.action_properties),
        ("resource properties", r.resource_properties),
        ("context", r.context),
    ):
        if value is not None:
            rows.append((name, safe(json.dumps(value, ensure_ascii=False, sort_keys=True))))
    if r.resource_ancestors is not None:
        rows.append(("ancestors", safe(", ".join(r.resource_ancestors) or "-")))
    rows.append(("chain", safe(f"{r.chain} seq {r.seq}, hash {r.hash[:16]}…")))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


# --- stats --------------------------------------------------------------------------------


@_guard
def run_stats(args: argparse.Namespace) -> int:
    if args.top < 1:
        return _usage("--top must be at least 1")
    flt = _filter(args)
    source = _open(args)
    try:
        stats = source.stats(flt)
    finally:
        source.close()
    _warn(stats.problems)
    if args.json:
        print_json(stats.to_json(args.top))
        return EXIT_OK
    _print_stats(stats, args.top)
    return EXIT_OK


def _print_stats(s: Stats, top: int) -> None:
    if not s.total:
        out.print("no matching decisions")
        return
    span = f"{format_time(s.first_us or 0)} to {format_time(s.last_us or 0)}"
    deny = s.by_decision.get("deny", 0)
    out.print(
        f"[bold]{s.total}[/] decisions, {s.by_decision.get('allow', 0)} allowed, "
        f"{deny} denied ({100 * deny / s.total:.1f}%), {span}"
    )
    for title, counter, limit in (
        ("by action", s.by_action, None),
        ("by resource type", s.by_resource_type, None),
        ("by rule", s.by_rule, top),
        ("top denied subjects", s.denied_subjects, top),
        ("top denying rules", s.denied_rules, top),
        ("authentication failures by cause", s.authn_failures, None),
    ):
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        table.add_column("", overflow="fold")
        table.add_column("count", justify="right")
        for name, n in ranked(counter, limit):
            table.add_row(safe(name or "-"), str(n))
        if counter:
            out.print()
            out.print(table)


# --- tail ---------------------------------------------------------------------------------


@_guard
def run_tail(args: argparse.Namespace) -> int:
    for flag, value in (("--lines", args.lines), ("--count", args.count)):
        if value is not None and value < 0:
            return _usage(f"{flag} must be 0 or more")
    if args.timeout is not None and args.timeout < 0:
        return _usage("--timeout must be 0 or more")
    flt = _filter(args)
    source = _open(args)
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    seen = 0

    def stop() -> bool:
        return (deadline is not None and time.monotonic() >= deadline) or (
            args.count is not None and seen >= args.count
        )

    try:
        # Where following starts is fixed before the recent records are searched, so
        # nothing recorded in between is missed (what both show is printed once).
        follower = source.follow(flt, stop, args.poll)
        recent = source.search(flt, args.lines).records if args.lines > 0 else []
        shown = {r.decision_id for r in recent}
        for r in reversed(recent):
            _tail_line(r, args.json)
        for item in follower:
            if isinstance(item, Problem):
                _warn([item])
                continue
            if item.decision_id in shown:
                continue
            _tail_line(item, args.json)
            seen += 1
            if stop():
                break
    finally:
        source.close()
    return EXIT_OK


def _refusal(r: DecisionRecord) -> str:
    """For a row without reasons: why no rule decided (`authn: token_expired`, `no_route`)."""
    if r.authn is not None and "cause" in r.authn:
        return f"authn: {r.authn['cause']}"
    codes = [d.code for d in r.diagnostics if d.code in NOT_BY_POLICY]
    return codes[0] if codes else "-"


def _http_text(http: Mapping[str, Any]) -> str:
    """`GET docs.example.com/tenants/acme/documents/42 → 403, route documents.read`."""
    text = f"{http.get('method', '?')} {http.get('host', '')}{http.get('path', '')}"
    if "status" in http:
        text += f" → {http['status']}"
    return text + (f", route {http['route']}" if http.get("route") else ", no route")


def _authn_text(authn: Mapping[str, Any]) -> str:
    """`failed (token_expired), bearer tok-1: expired 40 s ago` or `ok, apikey k7m2...`."""
    result = str(authn.get("result", "?"))
    text = f"{result} ({authn['cause']})" if "cause" in authn else result
    who = " ".join(str(authn[k]) for k in ("method", "credential") if authn.get(k))
    if who:
        text += f", {who}"
    if authn.get("detail"):
        text += f": {authn['detail']}"
    return text


def _who(r: DecisionRecord) -> str:
    return r.subject if r.subject_type else "-"


def _what(r: DecisionRecord) -> str:
    """The resource; for an HTTP request refused before it had one, the request itself."""
    if r.resource_type:
        return r.resource
    if r.http is not None:
        return f"{r.http.get('method', '')} {r.http.get('path', '')}".strip() or "-"
    return "-"


def _tail_line(r: DecisionRecord, as_json: bool) -> None:
    if as_json:
        out.file.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        out.file.flush()
        return
    reasons = ", ".join(x.rule for x in r.reasons) or _refusal(r)
    out.print(
        f"{format_time(r.time_us)[:23].replace('T', ' ')} {_verdict(r.allowed)} "
        f"{safe(_who(r))} {safe(r.action or '-')} {safe(_what(r))}  "
        f"[dim]{safe(reasons)}  "
        f"{r.decision_id}[/]"
    )


# --- verify -------------------------------------------------------------------------------


@_guard
def run_verify(args: argparse.Namespace) -> int:
    flt = _filter(args)
    source = _open(args)
    try:
        single = isinstance(source, JsonlSource) and source.single
        report = verify(source, flt, single_file=single)
    finally:
        source.close()
    if args.json:
        print_json({"ok": report.ok, "chains": [c.to_json() for c in report.chains]})
    elif not report.chains:
        out.print(f"no records in {safe(source.description)}")
    else:
        for c in report.chains:
            line = safe(describe(c))
            out.print(f"[green]{line}[/]" if c.ok else f"[bold red]{line}[/]")
    return EXIT_OK if report.ok else EXIT_ERROR
