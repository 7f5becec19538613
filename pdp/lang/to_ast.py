"""Lark tree → typed AST. Nothing after this module sees a Lark object."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.tree import Meta

from pdp.lang import ast
from pdp.lang.errors import PolicyError
from pdp.lang.source import SourceFile, SourceLoc

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_ESCAPE_RE = re.compile(r"\\(u\{[0-9A-Fa-f]{1,6}\}|.)")


def to_ast(src: SourceFile, tree: Tree[Token]) -> tuple[ast.PolicyFile, list[PolicyError]]:
    """Turn one file's parse tree into a `PolicyFile`; string escape errors are returned."""
    builder = _Builder(src)
    result = builder.transform(tree)
    assert isinstance(result, ast.PolicyFile)
    return result, builder.errors


@v_args(meta=True)
class _Builder(Transformer[Token, Any]):
    def __init__(self, src: SourceFile) -> None:
        super().__init__()
        self.src = src
        self.errors: list[PolicyError] = []

    # --- helpers ---------------------------------------------------------------

    def _loc(self, meta: Meta) -> SourceLoc | None:
        if getattr(meta, "empty", True):
            return None
        return SourceLoc(self.src.name, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_loc(self, tok: Token) -> SourceLoc:
        return SourceLoc(
            self.src.name,
            tok.line or 1,
            tok.column or 1,
            tok.end_line or tok.line or 1,
            tok.end_column or (tok.column or 1) + len(tok),
        )

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._tok_loc(tok))

    def _string(self, tok: Token) -> str:
        body = str(tok)[1:-1]

        def replace(m: re.Match[str]) -> str:
            esc = m.group(1)
            if esc in _ESCAPES:
                return _ESCAPES[esc]
            message = f"unknown escape sequence `\\{esc}` in string"
            if esc.startswith("u{"):
                code = int(esc[2:-1], 16)
                if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                    return chr(code)
                message = f"`\\{esc}` is not a Unicode character"
            col = (tok.column or 1) + 1 + m.start()
            line = tok.line or 1
            self.errors.append(
                PolicyError(
                    "invalid_escape",
                    message,
                    SourceLoc(self.src.name, line, col, line, col + 1 + len(esc)),
                    help='known escapes: `\\"` `\\\\` `\\n` `\\t` `\\r` `\\0` `\\u{1F600}`',
                    source_line=self.src.line_text(line),
                )
            )
            return esc

        return _ESCAPE_RE.sub(replace, body)

    # --- declarations ------------------------------------------------------------

    def start(self, meta: Meta, items: list[Any]) -> ast.PolicyFile:
        return ast.PolicyFile(
            name=self.src.name,
            roles=tuple(i for i in items if isinstance(i, ast.RoleDecl)),
            derived_roles=tuple(i for i in items if isinstance(i, ast.DerivedRoleDecl)),
            resources=tuple(i for i in items if isinstance(i, ast.ResourceDecl)),
        )

    def name_list(self, meta: Meta, names: list[Token]) -> tuple[ast.Ident, ...]:
        return tuple(self._ident(n) for n in names)

    def role_decl(self, meta: Meta, children: list[Any]) -> ast.RoleDecl:
        includes = children[1] if len(children) > 1 else ()
        return ast.RoleDecl(self._ident(children[0]), includes, self._loc(meta))

    def derived_decl(self, meta: Meta, children: list[Any]) -> ast.DerivedRoleDecl:
        name, rtype, cond = children
        return ast.DerivedRoleDecl(self._ident(name), self._ident(rtype), cond, self._loc(meta))

    def resource_decl(self, meta: Meta, children: list[Any]) -> ast.ResourceDecl:
        name, *body = children
        actions = tuple(a for group in body if isinstance(group, tuple) for a in group)
        rules = tuple(r for r in body if isinstance(r, ast.Rule))
        return ast.ResourceDecl(self._ident(name), actions, rules, self._loc(meta))

    def actions_decl(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...]:
        result: tuple[ast.Ident, ...] = children[0]
        return result

    def annotation(self, meta: Meta, children: list[Token]) -> ast.Annotation:
        name, value = children
        return ast.Annotation(self._ident(name), self._string(value), self._loc(meta))

    def principals(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...] | None:
        first = children[0]
        return None if isinstance(first, Token) and first.type == "ANY" else first

    def action_spec(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...] | None:
        first = children[0]
        return None if isinstance(first, Token) and first.type == "STAR" else first

    def when_clause(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Expr]:
        return ("when", children[0])

    def unless_clause(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Expr]:
        return ("unless", children[0])

    def rule(self, meta: Meta, children: list[Any]) -> ast.Rule:
        annotations = tuple(c for c in children if isinstance(c, ast.Annotation))
        rest = [c for c in children if not isinstance(c, ast.Annotation)]
        effect_tok, roles, actions, *clauses = rest
        clause = dict(clauses)
        effect_loc = self._tok_loc(effect_tok)
        # The rule is located at `permit`/`forbid`, as its automatic id is, not at
        # its first annotation.
        loc = SourceLoc(
            self.src.name, effect_loc.line, effect_loc.column, meta.end_line, meta.end_column
        )
        rule_id = next((a.value for a in annotations if a.name.name == "id"), None)
        return ast.Rule(
            id=rule_id if rule_id is not None else effect_loc.short,
            effect=ast.Effect(str(effect_tok)),
            roles=roles,
            actions=actions,
            when=clause.get("when"),
            unless=clause.get("unless"),
            annotations=annotations,
            loc=loc,
        )

    # --- expressions -------------------------------------------------------------

    def or_expr(self, meta: Meta, operands: list[ast.Expr]) -> ast.BoolOp:
        return ast.BoolOp("or", tuple(operands), self._loc(meta))

    def and_expr(self, meta: Meta, operands: list[ast.Expr]) -> ast.BoolOp:
        return ast.BoolOp("and", tuple(operands), self._loc(meta))

    def not_op(self, meta: Meta, children: list[ast.Expr]) -> ast.Not:
        return ast.Not(children[0], self._loc(meta))

    def compare(self, meta: Meta, children: list[Any]) -> ast.Compare:
        left, op, right = children
        return ast.Compare(str(op), left, right, self._loc(meta))

    def in_op(self, meta: Meta, children: list[ast.Expr]) -> ast.Compare:
        return ast.Compare("in", children[0], children[1], self._loc(meta))

    def contains_op(self, meta: Meta, children: list[ast.Expr]) -> ast.Compare:
        return ast.Compare("contains", children[0], children[1], self._loc(meta))

    def has_op(self, meta: Meta, children: list[Any]) -> ast.Has:
        return ast.Has(children[0], str(children[1]), self._loc(meta))

    def path(self, meta: Meta, children: list[Token]) -> ast.Path:
        root, *attrs = children
        return ast.Path(str(root), tuple(str(a) for a in attrs), self._loc(meta))

    def call(self, meta: Meta, children: list[Any]) -> ast.Call:
        name, *args = children
        return ast.Call(str(name), tuple(args), self._loc(meta))

    def list(self, meta: Meta, children: Sequence[ast.Expr]) -> ast.ListExpr:  # noqa: A003
        return ast.ListExpr(tuple(children), self._loc(meta))

    def literal(self, meta: Meta, children: Sequence[Token]) -> ast.Literal:
        tok = children[0]
        loc = self._loc(meta)
        value: ast.LiteralValue
        if tok.type == "STRING":
            value = self._string(tok)
        elif tok.type == "TRUE":
            value = True
        elif tok.type == "FALSE":
            value = False
        else:
            value = self._number(tok)
        return ast.Literal(value, loc)

    def _number(self, tok: Token) -> int | float:
        try:
            value: int | float = float(tok) if any(c in tok for c in ".eE") else int(tok)
            finite = math.isfinite(value)  # OverflowError for ints past a float's range
        except (ValueError, OverflowError):  # Python refuses int literals over 4300 digits
            value, finite = 0, False
        if not finite:
            loc = self._tok_loc(tok)
            self.errors.append(
                PolicyError(
                    "invalid_number",
                    "number is too large",
                    loc,
                    help="numbers must fit in a 64-bit float",
                    source_line=self.src.line_text(loc.line),
                )
            )
            return 0
        return value
