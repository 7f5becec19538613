"""`pdp test [DIR]`: run policy test suites (`*.test.yaml`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape

from pdp.cli.common import EXIT_ERROR, EXIT_OK, add_json_option, fail, out, print_json
from pdp.testing.runner import discover_suites, junit_xml, run_suites


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "test",
        help="run policy test suites (*.test.yaml)",
        description="Run every *.test.yaml suite under DIR against the policies in DIR "
        "(or the suite's own `policies:`), print a summary, and exit 1 on any failure.",
        epilog="exit codes: 0 all passed, 1 a failure or a broken suite, 2 usage",
    )
    p.add_argument("dir", nargs="?", default="policies", metavar="DIR", help="default: policies")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    add_json_option(p)
    p.add_argument(
        "--db",
        metavar="URL",
        help="take roles and attributes from the store at URL instead of each suite's "
        "`bindings` (e.g. sqlite:///pdp.db)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.exists():
        return fail(f"no such file or directory: {root}")
    if not discover_suites(root):
        return fail(f"no test suites (*.test.yaml) under {root}")
    if args.db:
        from pdp.store.errors import StoreError
        from pdp.store.sql import SqlStore  # lazily: only `--db` needs SQLAlchemy

        try:
            store = SqlStore(args.db, auto_create=False)  # reads only
        except StoreError as exc:
            return fail(exc.message)
        try:
            results = run_suites(root, bindings_override=store)
        finally:
            store.close()
    else:
        results = run_suites(root)
    if args.junit:
        Path(args.junit).write_text(junit_xml(results), encoding="utf-8")
    cases = sum(len(s.cases) for s in results)
    failed = sum(s.failed for s in results)
    failed_cases = sum(not c.passed for s in results for c in s.cases)
    broken = sum(1 for s in results if s.error)
    if args.json:
        print_json(
            {
                "suites": len(results),
                "cases": cases,
                "failed": failed_cases,
                "broken_suites": broken,
                "results": [
                    {
                        "suite": s.name,
                        "file": s.path,
                        "error": s.error,
                        "cases": [
                            {
                                "name": c.name,
                                "passed": c.passed,
                                "message": c.message,
                                "line": c.line,
                            }
                            for c in s.cases
                        ],
                    }
                    for s in results
                ],
            }
        )
        return EXIT_ERROR if failed else EXIT_OK
    for s in results:
        mark = "[green]✓[/]" if not s.failed else "[red]✗[/]"
        out.print(f"{mark} {escape(s.path)} ({escape(s.name)}): {len(s.cases)} case(s)")
        if s.error:
            out.print(f"    [red]suite error[/]: {escape(s.error)}")
        for c in s.cases:
            if not c.passed:
                at = f" ({s.path}:{c.line})" if c.line is not None else ""
                out.print(f"    [red]FAIL[/] {escape(c.name)}{escape(at)}: {escape(c.message)}")
    summary = (
        f"{len(results)} suite(s), {cases} case(s): {cases - failed_cases} passed, "
        f"{failed_cases} failed" + (f", {broken} suite(s) could not run" if broken else "")
    )
    out.print(("[green]" if not failed else "[red]") + summary + "[/]")
    return EXIT_ERROR if failed else EXIT_OK
