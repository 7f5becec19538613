"""The policy AST: frozen dataclasses; locations take no part in equality."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pdp.lang.source import SourceLoc


def _loc() -> SourceLoc | None:
    return field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class Ident:
    """A name as written, with where it was written."""

    name: str
    loc: SourceLoc | None = _loc()


# --- expressions -----------------------------------------------------------------

LiteralValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Literal:
    value: LiteralValue
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Path:
    """`root.a.b`: root is one of subject, resource, context, action."""

    root: str
    attrs: tuple[str, ...]
    loc: SourceLoc | None = _loc()

    def __str__(self) -> str:
        return ".".join((self.root, *self.attrs))


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class BoolOp:
    """`a and b and c` or `a or b`: short-circuit, operands must be booleans."""

    op: str  # "and" | "or"
    operands: tuple[Expr, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Compare:
    """A binary test: == != < <= > >= in contains."""

    op: str
    left: Expr
    right: Expr
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Has:
    """`target has attr`: true when the record `target` holds `attr`."""

    target: Expr
    attr: str
    loc: SourceLoc | None = _loc()


Expr = Literal | Path | ListExpr | Call | Not | BoolOp | Compare | Has


# --- declarations ----------------------------------------------------------------


class Effect(StrEnum):
    PERMIT = "permit"
    FORBID = "forbid"


@dataclass(frozen=True, slots=True)
class RoleDecl:
    name: Ident
    includes: tuple[Ident, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class DerivedRoleDecl:
    name: Ident
    resource_type: Ident
    condition: Expr
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Annotation:
    name: Ident
    value: str
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class Rule:
    """`permit|forbid ROLES to ACTIONS [when C] [unless C]`.

    `roles` is None for `any`; `actions` is None for `*`.
    """

    id: str
    effect: Effect
    roles: tuple[Ident, ...] | None
    actions: tuple[Ident, ...] | None
    when: Expr | None
    unless: Expr | None
    annotations: tuple[Annotation, ...] = ()
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class ResourceDecl:
    name: Ident
    actions: tuple[Ident, ...]
    rules: tuple[Rule, ...]
    loc: SourceLoc | None = _loc()


@dataclass(frozen=True, slots=True)
class PolicyFile:
    name: str
    roles: tuple[RoleDecl, ...]
    derived_roles: tuple[DerivedRoleDecl, ...]
    resources: tuple[ResourceDecl, ...]


@dataclass(frozen=True, slots=True)
class PolicySet:
    """All files of a policy directory, in name order, and their content hash."""

    files: tuple[PolicyFile, ...]
    version: str

    @property
    def roles(self) -> tuple[RoleDecl, ...]:
        return tuple(r for f in self.files for r in f.roles)

    @property
    def derived_roles(self) -> tuple[DerivedRoleDecl, ...]:
        return tuple(d for f in self.files for d in f.derived_roles)

    @property
    def resources(self) -> tuple[ResourceDecl, ...]:
        return tuple(r for f in self.files for r in f.resources)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for res in self.resources for rule in res.rules)
