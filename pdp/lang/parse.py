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

from pdp.lang.errors import PolicyError, closest, did_you_mean
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
# (`resource.x` at the start of a line goes on a condition.)
_SYNC = re.compile(r"^[ \t]*(role\b|derived\b|resource\b(?!\.)|permit\b|forbid\b|@|\})", re.M)
_RULE_START = re.compile(r"^[ \t]*(permit\b|forbid\b|@)", re.M)
_TOP_START = re.compile(r"^[ \t]*(role\b|derived\b|resource\b(?!\.))", re.M)
_RESOURCE_HEADER = re.compile(r"^[ \t]*resource\b[^{}]*\{[ \t]*(#.*)?$")
# A block's first line, its keyword perhaps misspelled; a `resource` header missing its `{`.
_BLOCK_OPEN = re.compile(r"^[^{}\"#]*\{[ \t]*(#.*)?$")
_HEADER_WITHOUT_BRACE = re.compile(r"^[ \t]*resource[ \t]+[A-Za-z_][A-Za-z0-9_\-]*[ \t]*(#.*)?$")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Brackets outside strings and comments; a string may stop unclosed at the end of its line.
_BRACKET = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[()\[\]{}]')
_CLOSER = {"(": ")", "[": "]", "{": "}"}
_OPENER = {v: k for k, v in _CLOSER.items()}


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
            unclosed = _unclosed(src, text, exc)
            err = unclosed[0] if unclosed else _syntax_error(src, text, exc)
            assert err.loc is not None
            # After a first error, running off the end is almost always its echo.
            cascade = errors and err.code == "unexpected_end"
            if (err.loc.line, err.code) not in seen and not cascade:
                errors.append(err)
                seen.add((err.loc.line, err.code))
            if isinstance(exc, UnexpectedEOF) or len(errors) >= MAX_ERRORS_PER_FILE:
                break
            if unclosed:
                blanked = unclosed[1]
            else:
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


def _syntax_error(src: SourceFile, text: str, exc: UnexpectedInput) -> PolicyError:
    """The error for what the parser rejected; `text` is what it read (`src` blanked in parts)."""
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
        # `=` is no operator at all, so the lexer stops before any parser rule could say so.
        equals = ch == "=" and "COMP_OP" in (exc.allowed or ())
        return PolicyError(
            "unexpected_character",
            f"unexpected character `{ch}`" if ch.isprintable() else "unexpected character",
            loc,
            help="to compare, write `==`" if equals else _expected_help(exc.allowed),
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
    typo = _misspelled_keyword(src, text, exc)
    if typo is not None:
        return typo
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
    accepts = set(_accepts(exc))
    # Only `resource NAME` takes a `{`; name it, as it may be lines above.
    brace = accepts == {"LBRACE"} and prev is not None
    return PolicyError(
        "unexpected_token",
        f"unexpected {_describe_token(token)}",
        loc,
        help=f"expected `{{` after `resource {prev}`" if brace else _expected_help(accepts),
        source_line=source_line,
    )


def _accepts(exc: UnexpectedToken) -> Iterable[str]:
    """What could really come next: LALR's `expected` holds merged lookaheads."""
    try:
        accepts = exc.accepts
    except Exception:  # the interactive parser may be gone; fall back to the coarse set
        accepts = None
    return accepts or exc.expected


def _unclosed(src: SourceFile, text: str, exc: UnexpectedInput) -> tuple[PolicyError, str] | None:
    """A bracket never closed, found where a later line cannot go on inside it.

    The parser notices a missing `)` or `}` only at the next statement, and would fail
    the same way at every statement after it: report the bracket, once, and skip what
    it swallowed. Returns the error and the text to parse next.
    """
    if not isinstance(exc, UnexpectedToken) or exc.token.type == "$END":
        return None
    token = exc.token
    pos = token.start_pos or 0
    if text[text.rfind("\n", 0, pos) + 1 : pos].strip():
        return None  # within a line, the mistake is more likely right there
    # Recovery blanks text: a bracket whose closer it blanked is not the author's mistake.
    unclosed = set(_unclosed_brackets(text)) & set(_unclosed_brackets(src.text))
    before = sorted(i for i in unclosed if i < pos)
    if not before:
        return None
    # INVARIANT: the text before `pos` parsed, so the parser is inside every bracket in `before`.
    at = before[-1]
    bracket, closer = text[at], _CLOSER[text[at]]
    if f"`{closer}`" not in {_terminal_words(t) for t in _accepts(exc)}:
        return None
    loc = src.loc_at(at)
    where = f"{src.name}:{token.line}:{token.column}"
    error = PolicyError(
        "unclosed",
        f"`{bracket}` is not closed",
        loc,
        help=f"expected `{closer}` before {_describe_token(token)} at {where}",
        source_line=src.line_text(loc.line),
    )
    if bracket == "{":
        # The block ends where the statement that failed starts; keep that statement.
        return error, _blank_lines(text, loc.line - 1, (token.line or loc.line) - 1)
    return error, _skip_statement(text, loc)


def _unclosed_brackets(text: str) -> list[int]:
    """Offsets of the brackets that no later bracket of their kind closes."""
    opened: dict[str, list[int]] = {"(": [], "[": [], "{": []}
    for m in _BRACKET.finditer(text):
        ch = m.group()
        if ch in opened:
            opened[ch].append(m.start())
        elif ch in _OPENER and opened[_OPENER[ch]]:
            opened[_OPENER[ch]].pop()
    return sorted(i for offsets in opened.values() for i in offsets)


def _misspelled_keyword(src: SourceFile, text: str, exc: UnexpectedToken) -> PolicyError | None:
    """A close misspelling of a keyword valid there, at the unexpected token or just before.

    The lexer reads `permitt` as `permit` and a name `t`, so the parser stumbles only at
    the next word: look at the whole word around each of the two tokens.
    """
    keywords = _keywords()
    every = {k for ks in keywords.values() for k in ks}
    failed_at = exc.token.start_pos or 0
    # At the first token of a file, lark's history holds None.
    previous = [t for t in (exc.token_history or [])[-1:] if t is not None]
    for token in (exc.token, *previous):
        start, word = _word_at(text, token.start_pos or 0)
        # A keyword can be a typo too: `action` for `actions`.
        if not _NAME.fullmatch(word) or closest(word, every - {word}) is None:
            continue
        # Where the parser failed, any keyword it accepts gets it further.
        here = start == failed_at
        accepted = _accepts(exc) if here else _accepted_at(text, start)
        keyword = closest(word, [k for t in accepted for k in keywords.get(t, ()) if k != word])
        # A misspelling is about as long as the word (`timeresource` is a missing `(`).
        if not keyword or abs(len(keyword) - len(word)) > 2:
            continue
        # A name may stand where a keyword could (`anyone` for `any`): suggest the keyword
        # only if it gets the parser past the spot where it failed.
        if here or _gets_further(text, start, word, keyword, failed_at):
            loc = src.loc_at(start, len(word))
            return PolicyError(
                "unexpected_token",
                f"unexpected {_describe_token(Token('NAME', word))}",
                loc,
                help=did_you_mean(word, [keyword]),
                source_line=src.line_text(loc.line),
            )
    return None


@cache
def _keywords() -> dict[str, tuple[str, ...]]:
    """Terminal name → the keywords it matches."""
    plain = {
        t.name: (t.pattern.value,)
        for t in parser().terminals
        if t.pattern.type == "str" and t.pattern.value.isalpha()
    }
    return {**plain, "EFFECT": ("permit", "forbid")}


def _word_at(text: str, pos: int) -> tuple[int, str]:
    """The start and text of the whole word around `pos`, which a token may be part of."""
    start = end = pos
    while start > 0 and text[start - 1] in _WORD_CHARS:
        start -= 1
    while end < len(text) and text[end] in _WORD_CHARS:
        end += 1
    return start, text[start:end]


def _accepted_at(text: str, offset: int) -> set[str]:
    """The terminals the parser accepts at `offset`, the text before it being valid."""
    interactive = parser().parse_interactive(text[:offset])
    try:
        interactive.exhaust_lexer()
    except UnexpectedInput:
        return set()
    return set(interactive.accepts())  # type: ignore[no-untyped-call]  # unannotated in lark


def _gets_further(text: str, start: int, word: str, keyword: str, failed_at: int) -> bool:
    """Whether the parser gets past `failed_at` once `word` at `start` reads `keyword`."""
    fixed = text[:start] + keyword + text[start + len(word) :]
    past = max(failed_at + len(keyword) - len(word), start)  # `start`: the keyword must be fed
    try:
        # Tokens come before they are fed: one beyond `past` means all up to it were taken.
        for token in parser().parse_interactive(fixed).iter_parse():
            if (token.start_pos or 0) > past:
                return True
    except UnexpectedInput:
        return False
    return True


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
    if token.type == "NAME" and not any(str(token) in ks for ks in _keywords().values()):
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
        header = j == err and _BLOCK_OPEN.match(lines[j])  # say, `resourc doc {`
        if header or _RULE_START.match(lines[j]) or _TOP_START.match(lines[j]):
            # Keep a `resource X {` header that parsed, so that its block still closes.
            header_ok = j != err and _RESOURCE_HEADER.match(lines[j])
            while not header_ok and j > 0 and lines[j - 1].lstrip().startswith("@"):
                j -= 1  # the rule's annotations go with it
            start = j + 1 if header_ok else j
            break
    end = len(lines)
    # A broken header is skipped with its block, whose lines and `}` would fail one by one.
    first = lines[start] if start < len(lines) else ""
    closing = bool(_BLOCK_OPEN.match(first) or _HEADER_WITHOUT_BRACE.match(first))
    for k in range(err + 1, len(lines)):
        if closing and lines[k].startswith("}"):
            end = k + 1
            break
        if not closing and _SYNC.match(lines[k]):
            end = k
            break
    if start >= end:
        start, end = err, err + 1
    return _blank_lines(text, start, end)


def _blank_lines(text: str, start: int, end: int) -> str:
    """Blank out lines `start` to `end` (0-based, end excluded), keeping every position."""
    lines = text.split("\n")
    blanked = [re.sub(r"\S", " ", line) for line in lines[start:end]]
    return "\n".join(lines[:start] + blanked + lines[end:])


def _line_before(loc: SourceLoc) -> SourceLoc:
    line = max(loc.line - 1, 1)
    return SourceLoc(loc.file, line, 1, line, 2)
