"""Policy text → Lark tree, turning every parser complaint into a `PolicyError`.

The Lark tree never leaves `pdp.lang`: `to_ast` turns it into typed nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from pdp.lang.errors import PolicyError
from pdp.lang.source import SourceFile, SourceLoc

MAX_FILE_BYTES = 1_000_000
MAX_NESTING = 64
MAX_ERRORS_PER_FILE = 50

# How expected terminals read in messages; keywords and punctuation render as `text`.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "EFFECT": "`permit` or `forbid`",
    "COMP_OP": "a comparison operator",
    "$END": "end of file",
}

# Tree nodes that nest expressions; parentheses leave none and are counted before parsing.
_EXPRESSION_NODES = frozenset(
    ("or_expr", "and_expr", "not_op", "compare", "in_op", "contains_op", "has_op", "call", "list")
)
_STATEMENT_KEYWORDS = frozenset(("role", "derived", "resource", "actions", "permit", "forbid"))

# Lines where a declaration or rule starts: error recovery resumes at the next one.
_SYNC = re.compile(r"^[ \t]*(role\b|derived\b|resource\b|permit\b|forbid\b|@|\})", re.M)
_RULE_START = re.compile(r"^[ \t]*(permit\b|forbid\b|@)", re.M)
_TOP_START = re.compile(r"^[ \t]*(role\b|derived\b|resource\b)", re.M)
_RESOURCE_HEADER = re.compile(r"^[ \t]*resource\b[^{}]*\{[ \t]*(#.*)?$")


@cache
def parser() -> Lark:
    """The one shared LALR parser (Lark parsers are safe to share once built)."""
    grammar = resources.files("pdp.lang").joinpath("policy.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def decode(name: str, data: bytes) -> tuple[SourceFile | None, list[PolicyError]]:
    """Bytes of a policy file → its text, or an error for oversize or non-UTF-8 input."""
    if len(data) > MAX_FILE_BYTES:
        return None, [
            PolicyError(
                "file_too_large",
                f"policy file is {len(data):,} bytes, more than the limit of {MAX_FILE_BYTES:,}",
                SourceLoc(name, 1, 1, 1, 2),
                help="split the policies over several files",
            )
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        src = SourceFile(name, good)
        loc = src.loc_at(len(good))
        return None, [
            PolicyError(
                "invalid_encoding",
                f"policy files must be UTF-8; byte 0x{data[exc.start]:02x} is not",
                loc,
                source_line=src.line_text(loc.line),
            )
        ]
    if text.startswith("\ufeff"):
        text = text[1:]
    nul = text.find("\x00")
    if nul >= 0:
        src = SourceFile(name, text)
        loc = src.loc_at(nul)
        return None, [
            PolicyError(
                "invalid_encoding",
                "policy files are text; this one holds a NUL byte",
                loc,
                source_line=src.line_text(loc.line).replace("\x00", " "),
            )
        ]
    return SourceFile(name, text), []


def parse(src: SourceFile) -> tuple[Tree[Token] | None, list[PolicyError]]:
    """Parse one file; on syntax errors, recover at the next rule or declaration.

    Returns the tree of the whole file when it has no errors, else None and every
    error found (up to MAX_ERRORS_PER_FILE).
    """
    errors = _check_nesting(src)
    if errors:
        return None, errors
    text = src.text
    seen: set[tuple[int, str]] = set()
    while True:
        try:
            tree = parser().parse(text)
        except UnexpectedInput as exc:
            err = _syntax_error(src, exc)
            assert err.loc is not None
            # After a first error, running off the end is almost always its echo.
            cascade = errors and err.code == "unexpected_end"
            if (err.loc.line, err.code) not in seen and not cascade:
                errors.append(err)
                seen.add((err.loc.line, err.code))
            if isinstance(exc, UnexpectedEOF) or len(errors) >= MAX_ERRORS_PER_FILE:
                break
            # An unfinished statement is found only at the keyword that starts the next
            # one; skip the unfinished one, which ends on the line before.
            at = err.loc if err.code != "unfinished" else _line_before(err.loc)
            blanked = _skip_statement(text, at)
            if blanked == text:
                break
            text = blanked
            continue
        if errors:
            return None, errors
        deep = _too_deep(src, tree)
        return (None, [deep]) if deep else (tree, [])
    return None, errors


def _check_nesting(src: SourceFile) -> list[PolicyError]:
    """Reject absurd nesting before the parser sees it, so later stages never recurse deep."""
    depth = 0
    in_string = False
    escape = False
    in_comment = False
    for i, ch in enumerate(src.text):
        if in_comment:
            in_comment = ch != "\n"
            continue
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"' or ch == "\n":
                in_string = False
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        if depth > MAX_NESTING:
            loc = src.loc_at(i)
            return [
                PolicyError(
                    "too_deep",
                    f"expression nests deeper than {MAX_NESTING} levels",
                    loc,
                    help="split the condition into derived roles or simpler tests",
                    source_line=src.line_text(loc.line),
                )
            ]
    return []


def _too_deep(src: SourceFile, tree: Tree[Token]) -> PolicyError | None:
    """Find expressions nested past the limit (e.g. `not not not ...`), without recursion."""
    # Declarations take a few levels above any expression.
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _EXPRESSION_NODES:
            depth += 1
        if depth > MAX_NESTING:
            meta = node.meta
            loc = SourceLoc(src.name, meta.line, meta.column, meta.line, meta.column + 1)
            return PolicyError(
                "too_deep",
                f"expression nests deeper than {MAX_NESTING} levels",
                loc,
                help="split the condition into derived roles or simpler tests",
                source_line=src.line_text(meta.line),
            )
        stack.extend((c, depth) for c in node.children if isinstance(c, Tree))
    return None


def _syntax_error(src: SourceFile, exc: UnexpectedInput) -> PolicyError:
    line = max(exc.line, 1) if exc.line is not None and exc.line > 0 else 1
    column = max(exc.column, 1) if exc.column is not None and exc.column > 0 else 1
    source_line = src.line_text(line)
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        ch = src.text[pos] if pos < len(src.text) else ""
        loc = SourceLoc(src.name, line, column, line, column + 1)
        if ch == '"':
            return PolicyError(
                "unterminated_string",
                "string is not closed before the end of the line",
                SourceLoc(src.name, line, column, line, len(source_line) + 1),
                help='close it with `"`; write `\\"` for a quote inside a string',
                source_line=source_line,
            )
        return PolicyError(
            "unexpected_character",
            f"unexpected character `{ch}`" if ch.isprintable() else "unexpected character",
            loc,
            help=_expected_help(exc.allowed),
            source_line=source_line,
        )
    if isinstance(exc, UnexpectedEOF):
        return _unexpected_end(src, exc.expected)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    prev = exc.token_history[-1] if exc.token_history else None
    if (
        prev is not None
        and str(prev) in _STATEMENT_KEYWORDS
        and prev.line is not None
        and prev.column is not None
        and not src.line_text(prev.line)[: prev.column - 1].strip()
    ):
        # A keyword read as a name: the statement before it was left unfinished.
        before = src.text.rstrip()[: src.text.rfind("\n", 0, prev.start_pos or 0)].rstrip()
        ending = before[-1:] if before else ""
        return PolicyError(
            "unfinished",
            f"`{prev}` starts a new statement, but the one before it is not finished",
            SourceLoc(src.name, prev.line, prev.column, prev.line, prev.column + len(prev)),
            help=f"the line before ends with `{ending}`; remove it or finish the list"
            if ending in (",", ":")
            else "finish the statement before this line",
            source_line=src.line_text(prev.line),
        )
    if token.type == "$END":
        return _unexpected_end(src, _accepts(exc))
    width = len(str(token)) if "\n" not in str(token) else 1
    if token.type == "NAME" and str(token) in ("permit", "forbid") and "RESOURCE" in exc.expected:
        return PolicyError(
            "unexpected_token",
            f"`{token}` rules belong inside a resource block",
            SourceLoc(src.name, line, column, line, column + width),
            help="write the rule inside `resource TYPE { actions ...; ... }`",
            source_line=source_line,
        )
    loc = SourceLoc(src.name, line, column, line, column + width)
    return PolicyError(
        "unexpected_token",
        f"unexpected {_describe_token(token)}",
        loc,
        help=_expected_help(_accepts(exc)),
        source_line=source_line,
    )


def _accepts(exc: UnexpectedToken) -> Iterable[str]:
    """What could really come next: LALR's `expected` holds merged lookaheads."""
    try:
        accepts = exc.accepts
    except Exception:  # the interactive parser may be gone; fall back to the coarse set
        accepts = None
    return accepts or exc.expected


def _unexpected_end(src: SourceFile, expected: Iterable[str] | None) -> PolicyError:
    end = src.loc_at(len(src.text.rstrip()))
    return PolicyError(
        "unexpected_end",
        "the file ends in the middle of a declaration",
        end,
        help=_expected_help(expected),
        source_line=src.line_text(end.line),
    )


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name `{token}`"
    if token.type == "STRING":
        return f"string {token}"
    if token.type == "NUMBER":
        return f"number `{token}`"
    return f"`{token}`"


def _expected_help(expected: Iterable[str] | None) -> str | None:
    words = sorted({_terminal_words(t) for t in expected or ()} - {""})
    if not words:
        return None
    if len(words) == 1:
        return f"expected {words[0]}"
    return "expected one of: " + ", ".join(words)


def _terminal_words(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    if name in ("COMMENT", "WS"):
        return ""
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return ""
    if pattern.type == "str":
        return f"`{pattern.value}`"
    return ""


def _skip_statement(text: str, loc: SourceLoc) -> str:
    """Blank out the statement holding the error, keeping positions, to resume after it."""
    lines = text.split("\n")
    err = min(loc.line, len(lines)) - 1
    start = err
    for j in range(err, -1, -1):
        if lines[j].strip().startswith("}") and j != err:
            break
        if _RULE_START.match(lines[j]) or _TOP_START.match(lines[j]):
            # Keep a `resource X {` header that parsed, so that its block still closes.
            header_ok = j != err and _RESOURCE_HEADER.match(lines[j])
            while not header_ok and j > 0 and lines[j - 1].lstrip().startswith("@"):
                j -= 1  # the rule's annotations go with it
            start = j + 1 if header_ok else j
            break
    end = len(lines)
    closing = _RESOURCE_HEADER.match(lines[start]) is not None if start < len(lines) else False
    for k in range(err + 1, len(lines)):
        if closing and lines[k].startswith("}"):
            end = k + 1
            break
        if not closing and _SYNC.match(lines[k]):
            end = k
            break
    if start >= end:
        start, end = err, err + 1
    blanked = [re.sub(r"\S", " ", line) for line in lines[start:end]]
    return "\n".join(lines[:start] + blanked + lines[end:])


def _line_before(loc: SourceLoc) -> SourceLoc:
    line = max(loc.line - 1, 1)
    return SourceLoc(loc.file, line, 1, line, 2)
