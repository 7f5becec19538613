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
  1  errors: invalid policies, failed tests, bad input files, missing policy paths
  2  wrong usage of the command (also a file named by a flag that does not exist)
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
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(parser, list(sys.argv[1:] if argv is None else argv), extra)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())


def _unrecognized(parser: argparse.ArgumentParser, argv: list[str], extra: list[str]) -> None:
    """Exit 2 with the usage of the command that was meant, naming the closest option.

    argparse would answer with the top-level usage, which helps nobody who typed
    `pdp serve --listne`.
    """
    from pdp.lang.errors import did_you_mean

    command = parser
    for token in argv:  # down the sub-commands the arguments name
        subs = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            command = subs[0].choices[token]
    options = [o for a in command._actions for o in a.option_strings]
    message = f"unrecognized arguments: {' '.join(extra)}"
    first = next((x.split("=")[0] for x in extra if x.startswith("--")), None)
    hint = did_you_mean(first, options) if first else None
    if first in _ADDRESS_FLAGS and "--listen" in options:
        # Not a typo: what other servers call it (and `make run` takes PORT=...).
        hint = "the address is one option here: `--listen HOST:PORT`, e.g. 127.0.0.1:50051"
    command.error(message + (f"; {hint}" if hint else ""))


_ADDRESS_FLAGS = ("--port", "--host", "--bind", "--address", "--addr")
