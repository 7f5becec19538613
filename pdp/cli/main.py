"""The `pdp` command: one module per verb, each with `register` and `run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pdp import __version__
from pdp.cli import (
    apikeys,
    audit,
    bindings,
    check,
    db,
    groups,
    serve,
    sessions,
    store,
    subjects,
    test,
    tokens,
    validate,
)

VERBS = (
    validate,
    check,
    test,
    serve,
    bindings,
    subjects,
    groups,
    store,
    db,
    apikeys,
    sessions,
    tokens,
    audit,
)

EPILOG = """\
exit codes:
  0  success (clean policies, all tests passed, every decision allowed)
  1  errors: invalid policies, failed tests, bad input files
  2  wrong usage of the command
  3  `pdp check`: at least one decision was a deny
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdp",
        description="A policy decision point: validate, test and evaluate policies.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdp {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pdp` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
