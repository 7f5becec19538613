"""What the verbs share: output helpers and loading policies the same way everywhere."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pdp.lang.errors import PolicyError, PolicyLoadError, render_all
from pdp.lang.load import LoadResult, load_paths
from pdp.lang.schema import Schema, load_schema
from pdp.lang.times import parse_time

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DENY = 0, 1, 2, 3

# Piped or redirected, rich would lay tables out for 80 columns and fold ids in two;
# a file or a pager has room, and a folded id cannot be searched for.
_PIPE_WIDTH = None if sys.stdout.isatty() else 200


def console(**options: Any) -> Console:
    """A rich console as every command prints: no highlighting, no emoji codes (an id
    such as `user:a:b` would print as `user🅰b`), long lines kept whole."""
    return Console(highlight=False, emoji=False, soft_wrap=True, **options)


out = console(width=_PIPE_WIDTH)
err = console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str) -> int:
    """Report a problem with the user's input on stderr; return the error exit code."""
    err.print(f"[bold red]error[/]: {escape(message)}", markup=True)
    return EXIT_ERROR


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """`--json`: machine-readable output instead of text for people."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def load_policies(
    paths: list[str], schema_path: str | None, flag: str = ""
) -> tuple[LoadResult | None, int]:
    """Load policies (and the schema); on failure print the errors and give the exit code.

    `flag`: the option that named `paths` (`--policies`), for messages.
    """
    schema: Schema | None = None
    try:
        if schema_path:
            schema = load_schema(schema_path)
        loaded = load_paths(paths, schema)
    except FileNotFoundError as exc:
        where = f"{flag}: " if flag and exc.filename in paths else ""
        return None, fail(
            f"{where}no such file or directory: {exc.filename}" if exc.filename else str(exc)
        )
    except OSError as exc:
        return None, fail(f"cannot read {exc.filename}: {exc.strerror}")
    except PolicyLoadError as exc:  # the schema file
        err.print(render_all(exc.errors), markup=False)
        return None, EXIT_ERROR
    problems = tuple(_as_given(p, paths) for p in loaded.problems)
    return replace(loaded, problems=problems), EXIT_OK


def _as_given(problem: PolicyError, paths: list[str]) -> PolicyError:
    """The problem located by a path that opens from here: a directory's files are named
    relative to it (as rule ids are), which does not resolve from the working directory."""
    loc = problem.loc
    if loc is None or Path(loc.file).is_file():
        return problem
    for d in paths:
        if Path(d).is_dir() and (Path(d) / loc.file).is_file():
            return replace(problem, loc=replace(loc, file=(Path(d) / loc.file).as_posix()))
    return problem


def parse_now(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def read_input(path: str) -> str:
    """The text of `path`, or of stdin for `-`; OSError or UnicodeDecodeError when unreadable."""
    if path == "-":
        return sys.stdin.read()
    return Path(path).read_text(encoding="utf-8")


def existing_file(text: str) -> str:
    if text != "-" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


# C0 and C1 control characters (ESC, CSI, backspace, ...), and DEL.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """For rich output: markup escaped, control characters shown as `\\xNN`.

    Requests and records hold what callers sent (ids, attributes): printed raw, an
    escape sequence in a resource id could rewrite the reader's terminal.
    """
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def print_explanation(d: Any) -> None:
    """A decision explained (`pdp check --explain`, `pdp audit show`): every candidate
    rule and why it applied or not, what decided, and the diagnostics."""
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("rule", "where", "effect", "role", "condition", "applied"):
        # Ids and messages wrap rather than being cut when the output is narrow or piped.
        table.add_column(col, overflow="fold")
    for t in d.trace:
        table.add_row(
            safe(t.rule_id),
            safe(t.where),
            t.effect,
            safe(t.role or "-"),
            safe(t.condition),
            "[bold]yes[/]" if t.applied else "no",
        )
    if d.trace:
        out.print(table)
    else:
        out.print("  no candidate rules")
    if d.reasons:
        kind = "allowed by" if d.allowed else "denied by"
        out.print(safe(f"  {kind}: " + ", ".join(d.reasons)))
    elif not d.allowed:
        out.print("  denied by default: no permit applied")
    for diag in d.diagnostics:
        rule = f" {diag.rule_id}" if diag.rule_id else ""
        out.print(safe(f"  diagnostic[{diag.code}]{rule}: {diag.message}"))
