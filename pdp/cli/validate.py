"""`pdp validate PATH...`: check policy syntax and meaning."""

from __future__ import annotations

import argparse
from typing import Any

from pdp.cli.common import EXIT_ERROR, EXIT_OK, add_json_option, err, load_policies, out, print_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check policies for syntax and meaning errors",
        description="Check policy files for syntax errors, undeclared roles and actions, "
        "duplicate rule ids, role cycles, type errors against a schema, and rules that can "
        "never apply (warnings).",
        epilog="exit codes: 0 no errors (warnings allowed), 1 errors found, 2 usage",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    p.add_argument("--schema", metavar="FILE", help="attribute schema (YAML) to type-check against")
    add_json_option(p)
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result, code = load_policies(args.paths, args.schema)
    if result is None:
        return code
    failed = bool(result.errors) or (args.strict and bool(result.warnings))
    if args.json:
        rules = len(result.policy_set.rules) if result.policy_set else 0
        data: dict[str, object] = {
            "ok": not failed,
            "files": len(result.sources),
            "rules": rules,
            "policy_version": result.policy_set.version if result.policy_set else None,
            "problems": [p.to_json() for p in result.problems],
        }
        print_json(data)
        return EXIT_ERROR if failed else EXIT_OK
    for problem in result.problems:
        err.print(problem.render(), markup=False)
        err.print()
    n_err, n_warn = len(result.errors), len(result.warnings)
    if result.policy_set is not None and not failed:
        ps = result.policy_set
        out.print(
            f"ok: {len(ps.files)} file(s), {len(ps.roles)} role(s), {len(ps.resources)} "
            f"resource type(s), {len(ps.rules)} rule(s); policy_version {ps.version}"
            + (f"; {n_warn} warning(s)" if n_warn else ""),
            markup=False,
        )
        return EXIT_OK
    err.print(f"{n_err} error(s), {n_warn} warning(s)", markup=False)
    return EXIT_ERROR
