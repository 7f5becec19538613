"""Meaning checks over a parsed policy set: names, cycles, types, dead rules.

Every check adds to one list, so a run reports all problems at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pdp.lang import ast
from pdp.lang.errors import PolicyError, Severity, did_you_mean
from pdp.lang.functions import FUNCTIONS
from pdp.lang.graph import cycles
from pdp.lang.schema import Schema
from pdp.lang.source import SourceLoc
from pdp.lang.times import parse_time

KNOWN_ANNOTATIONS = ("id", "description", "owner")
# Words of the language; as names they would make rules read ambiguously.
RESERVED = frozenset(
    "role derived on when unless resource actions permit forbid any to and or not in "
    "contains has true false subject context action".split()
)
_BUILTIN_ATTRS = {"subject": ("id", "type"), "resource": ("id", "type"), "action": ("name",)}
_NUMERIC = ("int", "float", "number")


def validate(ps: ast.PolicySet, schema: Schema | None = None) -> list[PolicyError]:
    """Every error and warning in the policy set, in no particular order."""
    return _Validator(ps, schema).run()


@dataclass
class _Scope:
    """What a condition may refer to: the resource type it is about, if known."""

    resource_type: str | None


class _Validator:
    def __init__(self, ps: ast.PolicySet, schema: Schema | None) -> None:
        self.ps = ps
        self.schema = schema
        self.problems: list[PolicyError] = []

    def error(self, code: str, msg: str, loc: SourceLoc | None, help: str | None = None) -> None:
        self.problems.append(PolicyError(code, msg, loc, help))

    def warn(self, code: str, msg: str, loc: SourceLoc | None, help: str | None = None) -> None:
        self.problems.append(PolicyError(code, msg, loc, help, Severity.WARNING))

    def run(self) -> list[PolicyError]:
        self.roles = self._check_roles()
        self.resources = self._check_resources()
        self.derived = self._check_derived()
        self._check_rules()
        return self.problems

    # --- roles -----------------------------------------------------------------

    def _check_roles(self) -> dict[str, ast.RoleDecl]:
        roles: dict[str, ast.RoleDecl] = {}
        for decl in self.ps.roles:
            first = roles.get(decl.name.name)
            if first is not None:
                self.error(
                    "duplicate_role",
                    f"role `{decl.name.name}` is declared twice",
                    decl.name.loc,
                    help=f"first declared at {first.name.loc}" if first.name.loc else None,
                )
                continue
            self._check_not_reserved(decl.name, "a role")
            roles[decl.name.name] = decl
        derived_names = {d.name.name for d in self.ps.derived_roles}
        for decl in roles.values():
            for inc in decl.includes:
                if inc.name in derived_names and inc.name not in roles:
                    self.error(
                        "derived_role_included",
                        f"derived role `{inc.name}` cannot be included in role `{decl.name.name}`",
                        inc.loc,
                        help="derived roles come from conditions; name them in rules instead",
                    )
                elif inc.name not in roles:
                    self.error(
                        "unknown_role",
                        f"role `{inc.name}` is not declared",
                        inc.loc,
                        help=did_you_mean(inc.name, roles),
                    )
        self._check_cycles(roles)
        return roles

    def _check_not_reserved(self, name: ast.Ident, what: str) -> None:
        if name.name in RESERVED:
            self.error(
                "reserved_name",
                f"`{name.name}` is a keyword and cannot name {what}",
                name.loc,
                help="choose another name",
            )

    def _check_cycles(self, roles: dict[str, ast.RoleDecl]) -> None:
        graph = {name: [i.name for i in decl.includes] for name, decl in roles.items()}
        for cycle in cycles(graph):
            # Point at the inclusion that closes the cycle.
            inc = next(x for x in roles[cycle[-2]].includes if x.name == cycle[-1])
            self.error(
                "role_cycle",
                "roles include each other in a cycle: " + " → ".join(f"`{c}`" for c in cycle),
                inc.loc,
                help="role inclusion must form a hierarchy; remove one inclusion",
            )

    # --- resources and derived roles ----------------------------------------------

    def _check_resources(self) -> dict[str, ast.ResourceDecl]:
        resources: dict[str, ast.ResourceDecl] = {}
        for res in self.ps.resources:
            first = resources.get(res.name.name)
            if first is not None:
                self.error(
                    "duplicate_resource",
                    f"resource `{res.name.name}` is declared twice",
                    res.name.loc,
                    help=f"first declared at {first.name.loc}; keep one block per resource type",
                )
                continue
            resources[res.name.name] = res
            self._check_not_reserved(res.name, "a resource type")
            for action in res.actions:
                self._check_not_reserved(action, "an action")
            if not res.actions:
                self.error(
                    "no_actions",
                    f"resource `{res.name.name}` declares no actions",
                    res.name.loc,
                    help="add a line such as `actions read, update`",
                )
            seen: set[str] = set()
            for action in res.actions:
                if action.name in seen:
                    self.warn(
                        "duplicate_action", f"action `{action.name}` is listed twice", action.loc
                    )
                seen.add(action.name)
        return resources

    def _check_derived(self) -> dict[tuple[str, str], ast.DerivedRoleDecl]:
        derived: dict[tuple[str, str], ast.DerivedRoleDecl] = {}
        for d in self.ps.derived_roles:
            name, rtype = d.name.name, d.resource_type.name
            if name in self.roles:
                decl = self.roles[name]
                self.error(
                    "derived_role_clash",
                    f"derived role `{name}` has the name of a declared role",
                    d.name.loc,
                    help=f"role `{name}` is declared at {decl.name.loc}; rename one of them",
                )
            if rtype not in self.resources:
                self.error(
                    "unknown_resource",
                    f"resource type `{rtype}` is not declared",
                    d.resource_type.loc,
                    help=did_you_mean(rtype, self.resources),
                )
            if (name, rtype) in derived:
                self.error(
                    "duplicate_derived_role",
                    f"derived role `{name}` on `{rtype}` is declared twice",
                    d.name.loc,
                )
                continue
            derived[(name, rtype)] = d
            self._check_not_reserved(d.name, "a derived role")
            self._check_condition(d.condition, _Scope(rtype))
        return derived

    # --- rules -------------------------------------------------------------------

    def _check_rules(self) -> None:
        ids: dict[str, ast.Rule] = {}
        derived_names = {name for name, _ in self.derived}
        for res in self.resources.values():
            rtype = res.name.name
            declared_actions = {a.name for a in res.actions}
            for rule in res.rules:
                first = ids.get(rule.id)
                if first is not None:
                    self.error(
                        "duplicate_rule_id",
                        f"rule id `{rule.id}` is used twice",
                        _id_loc(rule),
                        help=f"first used at {first.loc.short if first.loc else '?'}"
                        + (
                            "; rules without `@id` are named `file:line`: give each its own "
                            "line or an `@id`"
                            if rule.id == (rule.loc.short if rule.loc else None)
                            else ""
                        ),
                    )
                else:
                    ids[rule.id] = rule
                self._check_annotations(rule)
                for role in rule.roles or ():
                    if role.name in self.roles:
                        continue
                    if (role.name, rtype) in self.derived:
                        continue
                    if role.name in derived_names:
                        on = sorted(t for n, t in self.derived if n == role.name)
                        self.error(
                            "derived_role_wrong_resource",
                            f"derived role `{role.name}` is not defined on `{rtype}`",
                            role.loc,
                            help="it is defined on " + ", ".join(f"`{t}`" for t in on),
                        )
                    else:
                        self.error(
                            "unknown_role",
                            f"role `{role.name}` is not declared",
                            role.loc,
                            help=did_you_mean(role.name, [*self.roles, *derived_names]),
                        )
                for action in rule.actions or ():
                    if action.name not in declared_actions:
                        self.error(
                            "unknown_action",
                            f"action `{action.name}` is not declared on resource `{rtype}`",
                            action.loc,
                            help="every action is written `*`"
                            if action.name in ("any", "all")
                            else did_you_mean(action.name, declared_actions)
                            or "declared: " + ", ".join(f"`{a}`" for a in sorted(declared_actions)),
                        )
                for cond in (rule.when, rule.unless):
                    if cond is not None:
                        self._check_condition(cond, _Scope(rtype))
                self._check_never_applies(rule)
            self._check_shadowed(res)

    def _check_annotations(self, rule: ast.Rule) -> None:
        ids = [a for a in rule.annotations if a.name.name == "id"]
        for extra in ids[1:]:
            self.error(
                "duplicate_annotation",
                "a rule has one `@id`; this one would be ignored",
                extra.loc,
                help=f"the rule is `{ids[0].value}`",
            )
        if ids and not ids[0].value.strip():
            self.error("empty_rule_id", "`@id` is empty: a rule id names the rule", ids[0].loc)
        for ann in rule.annotations:
            if ann.name.name not in KNOWN_ANNOTATIONS:
                self.warn(
                    "unknown_annotation",
                    f"annotation `@{ann.name.name}` has no meaning here",
                    ann.name.loc,
                    help=did_you_mean(ann.name.name, KNOWN_ANNOTATIONS),
                )

    def _check_never_applies(self, rule: ast.Rule) -> None:
        when = _constant(rule.when) if rule.when is not None else True
        unless = _constant(rule.unless) if rule.unless is not None else False
        if when is False or unless is True:
            self.warn(
                "never_applies",
                f"rule `{rule.id}` can never apply: its condition is always false",
                rule.loc,
            )

    def _check_shadowed(self, res: ast.ResourceDecl) -> None:
        """A permit whose actions an unconditional `forbid any` covers can never allow."""
        all_actions = frozenset(a.name for a in res.actions)
        blocked: dict[str, str] = {}
        for rule in res.rules:
            if rule.effect is ast.Effect.FORBID and rule.roles is None:
                if rule.when is None and rule.unless is None:
                    for a in _actions(rule, all_actions):
                        blocked.setdefault(a, rule.id)
        for rule in res.rules:
            if rule.effect is ast.Effect.PERMIT:
                acts = _actions(rule, all_actions)
                if acts and all(a in blocked for a in acts):
                    by = blocked[sorted(acts)[0]]
                    self.warn(
                        "unreachable",
                        f"rule `{rule.id}` can never allow: forbid `{by}` always denies "
                        "its actions",
                        rule.loc,
                    )

    # --- conditions --------------------------------------------------------------

    def _check_condition(self, expr: ast.Expr, scope: _Scope) -> None:
        t = self._type(expr, scope)
        if t not in ("bool", "any"):
            self.error(
                "not_boolean",
                f"a condition must be true or false, this is {_a(t)}",
                expr.loc,
            )

    def _type(self, e: ast.Expr, scope: _Scope) -> str:
        """Infer the static type of `e`, reporting what cannot work; `any` when unknown."""
        match e:
            case ast.Literal(value=v):
                return _literal_type(v)
            case ast.ListExpr(items=items):
                for item in items:
                    self._type(item, scope)
                return "list"
            case ast.Path():
                return self._path_type(e, scope)
            case ast.Not(operand=op):
                self._expect(op, "bool", "`not`", scope)
                return "bool"
            case ast.BoolOp(op=op, operands=operands):
                for x in operands:
                    self._expect(x, "bool", f"`{op}`", scope)
                return "bool"
            case ast.Has(target=target, attr=attr):
                if isinstance(target, ast.Path) and not target.attrs:
                    # A typo in a `has` guard would silently switch the guard off.
                    self._path_type(ast.Path(target.root, (attr,), e.loc), scope)
                    return "bool"
                t = self._type(target, scope)
                if t not in ("record", "any"):
                    self.error(
                        "type_mismatch",
                        f"`has` needs a record on its left, this is {_a(t)}",
                        target.loc,
                    )
                return "bool"
            case ast.Compare(op=op, left=left, right=right):
                return self._compare_type(op, left, right, e.loc, scope)
            case ast.Call():
                return self._call_type(e, scope)
        raise AssertionError(f"unknown expression {e!r}")

    def _expect(self, e: ast.Expr, want: str, where: str, scope: _Scope) -> None:
        t = self._type(e, scope)
        if not _compatible(t, want):
            self.error("type_mismatch", f"{where} needs {_a(want)}, this is {_a(t)}", e.loc)

    def _compare_type(
        self, op: str, left: ast.Expr, right: ast.Expr, loc: SourceLoc | None, scope: _Scope
    ) -> str:
        lt, rt = self._type(left, scope), self._type(right, scope)
        if op in ("==", "!="):
            if "any" not in (lt, rt) and not (lt == rt or (lt in _NUMERIC and rt in _NUMERIC)):
                self.error(
                    "type_mismatch",
                    f"comparing {_a(lt)} with {_a(rt)} is always {str(op != '==').lower()}",
                    loc,
                )
        elif op in ("<", "<=", ">", ">="):
            bad_side = False
            for t, side in ((lt, left), (rt, right)):
                if t not in ("any", "string", "time", *_NUMERIC):
                    self.error(
                        "type_mismatch",
                        f"`{op}` compares numbers, strings or times, not {_a(t)}",
                        side.loc,
                    )
                    bad_side = True
            ordered = {lt, rt} - {"any"}
            if not bad_side and len(ordered) == 2 and not ordered <= set(_NUMERIC):
                self.error("type_mismatch", f"`{op}` cannot compare {_a(lt)} with {_a(rt)}", loc)
        elif op == "in":
            if rt not in ("list", "any"):
                self.error(
                    "type_mismatch", f"`in` needs a list on its right, this is {_a(rt)}", right.loc
                )
        elif op == "contains":
            if lt not in ("list", "string", "any"):
                self.error(
                    "type_mismatch",
                    f"`contains` needs a list or string on its left, this is {_a(lt)}",
                    left.loc,
                )
            elif lt == "string" and rt not in ("string", "any"):
                self.error(
                    "type_mismatch",
                    f"a string can only contain a string, this is {_a(rt)}",
                    right.loc,
                )
        return "bool"

    def _call_type(self, call: ast.Call, scope: _Scope) -> str:
        sig = FUNCTIONS.get(call.name)
        if sig is None:
            self.error(
                "unknown_function",
                f"function `{call.name}` does not exist",
                call.loc,
                help=did_you_mean(call.name, FUNCTIONS)
                or "functions: " + ", ".join(sorted(FUNCTIONS)),
            )
            for a in call.args:
                self._type(a, scope)
            return "any"
        if len(call.args) != len(sig.params):
            self.error(
                "wrong_arguments",
                f"`{call.name}` takes {_count(len(sig.params))}, not {len(call.args)}",
                call.loc,
                help=f"{call.name}({', '.join(sig.params)}): {sig.doc}",
            )
            return sig.returns
        for arg, want in zip(call.args, sig.params, strict=True):
            self._expect(arg, want, f"argument of `{call.name}`", scope)
        self._check_literal_args(call)
        return sig.returns

    def _check_literal_args(self, call: ast.Call) -> None:
        """Literal arguments that could never work are caught at load time, not per request."""
        for arg in call.args:
            if not (isinstance(arg, ast.Literal) and isinstance(arg.value, str)):
                continue
            try:
                if call.name == "time":
                    parse_time(arg.value)
                elif call.name == "in_cidr" and arg is call.args[1]:
                    ipaddress.ip_network(arg.value, strict=False)
            except ValueError:
                what = (
                    "an ISO 8601 time" if call.name == "time" else "a network such as `10.0.0.0/8`"
                )
                self.error("invalid_argument", f"`{arg.value}` is not {what}", arg.loc)

    def _path_type(self, p: ast.Path, scope: _Scope) -> str:
        if not p.attrs:
            return "record"
        first = p.attrs[0]
        if first in _BUILTIN_ATTRS.get(p.root, ()):
            return "string" if len(p.attrs) == 1 else self._nested_error(p)
        if self.schema is None:
            return "any"
        known: dict[str, str] | None = None
        if p.root == "subject" and self.schema.subjects:
            known = {}
            for attrs in self.schema.subjects.values():
                for k, v in attrs.items():
                    known[k] = v if known.get(k, v) == v else "any"
        elif p.root == "resource" and scope.resource_type in self.schema.resources:
            known = dict(self.schema.resources[scope.resource_type or ""])
        elif p.root == "context" and self.schema.context:
            known = dict(self.schema.context)
        if known is None:
            return "any"
        if first not in known:
            where = {
                "subject": "any subject type",
                "resource": f"resource type `{scope.resource_type}`",
                "context": "the context",
            }[p.root]
            self.error(
                "unknown_attribute",
                f"`{p.root}.{first}` is not in the schema for {where}",
                p.loc,
                help=did_you_mean(first, known),
            )
            return "any"
        t = known[first]
        if len(p.attrs) > 1:
            return "any" if t in ("record", "any") else self._nested_error(p, t)
        return "float" if t == "number" else t

    def _nested_error(self, p: ast.Path, t: str = "string") -> str:
        self.error(
            "type_mismatch", f"`{p.root}.{p.attrs[0]}` is {_a(t)}, it has no attributes", p.loc
        )
        return "any"


def _a(type_name: str) -> str:
    """`int` → `an int`: type names as they read in a sentence."""
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


def _count(n: int) -> str:
    return f"{n} argument" if n == 1 else f"{n} arguments"


def _compatible(have: str, want: str) -> bool:
    if "any" in (have, want) or have == want:
        return True
    return have in _NUMERIC and want in _NUMERIC


def _literal_type(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "string"


def _actions(rule: ast.Rule, all_actions: frozenset[str]) -> frozenset[str]:
    if rule.actions is None:
        return all_actions
    return frozenset(a.name for a in rule.actions) & all_actions


def _id_loc(rule: ast.Rule) -> SourceLoc | None:
    for ann in rule.annotations:
        if ann.name.name == "id":
            return ann.loc
    return rule.loc


_UNKNOWN = object()


def _constant(e: ast.Expr | None) -> object:
    """The value of a condition that needs no request, else a marker for 'depends'."""
    match e:
        case ast.Literal(value=v):
            return v
        case ast.Not(operand=op):
            inner = _constant(op)
            return (not inner) if isinstance(inner, bool) else _UNKNOWN
        case ast.BoolOp(op="and", operands=ops):
            vals = [_constant(o) for o in ops]
            if any(v is False for v in vals):
                return False
            return True if all(v is True for v in vals) else _UNKNOWN
        case ast.BoolOp(op="or", operands=ops):
            vals = [_constant(o) for o in ops]
            if any(v is True for v in vals):
                return True
            return False if all(v is False for v in vals) else _UNKNOWN
    return _UNKNOWN
