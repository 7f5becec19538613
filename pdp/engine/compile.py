"""Compile a validated policy set into an immutable index of rules per (type, action).

Role inclusion is closed here: each rule stores the set of held roles that satisfy
it, so a decision tests one set intersection instead of walking the hierarchy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cachetools import LRUCache

from pdp.engine.conditions import compile_condition, compile_rule_condition
from pdp.engine.env import Condition
from pdp.lang import ast
from pdp.lang.source import SourceLoc


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    forbid: bool
    # Held roles that satisfy the rule (its roles and every role that includes
    # them), or None for `any`.
    roles: frozenset[str] | None
    # Derived roles the rule names, tried only when no held role matched.
    derived: tuple[str, ...]
    condition: Condition | None
    loc: SourceLoc | None
    # Whether the condition reads `action`; if not, its value is the same for every
    # action of one subject, resource and context, and a batch evaluates it once.
    reads_action: bool = True

    @property
    def where(self) -> str:
        return self.loc.short if self.loc else "?"


# A rule as `decide` reads it: (id, roles or None for `any`, derived roles, condition,
# and the key under which a batch shares the condition's value, or None).
Step = tuple[str, frozenset[str] | None, tuple[str, ...], Condition | None, str | None]


@dataclass(frozen=True, slots=True)
class Candidates:
    """The rules that can decide one (resource type, action)."""

    forbids: tuple[CompiledRule, ...]
    permits: tuple[CompiledRule, ...]
    # The same rules, in the same order, as plain tuples: `decide` unpacks each once
    # instead of reading four attributes, on every decision.
    forbid_steps: tuple[Step, ...] = field(init=False, repr=False, compare=False)
    permit_steps: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "forbid_steps", tuple(map(_step, self.forbids)))
        object.__setattr__(self, "permit_steps", tuple(map(_step, self.permits)))


def _step(rule: CompiledRule) -> Step:
    share = None if rule.condition is None or rule.reads_action else rule.id
    return (rule.id, rule.roles, rule.derived, rule.condition, share)


@dataclass(frozen=True)
class CompiledPolicySet:
    """Immutable and shared between threads; swapping sets is one reference assignment."""

    version: str
    index: Mapping[tuple[str, str], Candidates]
    # (derived role, resource type) → compiled condition.
    derived: Mapping[tuple[str, str], Condition]
    actions: Mapping[str, tuple[str, ...]]  # resource type → declared actions
    roles: Mapping[str, frozenset[str]]  # role → every role it includes, itself too
    rules: Mapping[str, CompiledRule]  # id → rule
    # Derived roles whose condition reads `action`: not shared between actions.
    action_dependent_derived: frozenset[str] = frozenset()

    def rule_location(self, rule_id: str) -> str | None:
        rule = self.rules.get(rule_id)
        return rule.where if rule else None


_cache: LRUCache[str, CompiledPolicySet] = LRUCache(maxsize=16)
_cache_lock = threading.Lock()


def compile_policy_set(ps: ast.PolicySet) -> CompiledPolicySet:
    """Compile once per content hash; later calls with the same version reuse the result."""
    with _cache_lock:
        hit = _cache.get(ps.version)
    if hit is not None:
        return hit
    compiled = _compile(ps)
    with _cache_lock:
        _cache[ps.version] = compiled
    return compiled


def _closure(roles: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """role → all roles it includes (itself too). Cycles were rejected by validation."""
    out: dict[str, frozenset[str]] = {}
    for start in roles:
        seen = {start}
        todo = list(roles[start])
        while todo:
            r = todo.pop()
            if r not in seen:
                seen.add(r)
                todo.extend(roles.get(r, ()))
        out[start] = frozenset(seen)
    return out


def _compile(ps: ast.PolicySet) -> CompiledPolicySet:
    includes = {r.name.name: tuple(i.name for i in r.includes) for r in ps.roles}
    closure = _closure(includes)
    # Who satisfies a rule naming role R: every role whose closure holds R.
    holders: dict[str, set[str]] = {r: set() for r in closure}
    for role, included in closure.items():
        for r in included:
            holders[r].add(role)
    derived = {
        (d.name.name, d.resource_type.name): compile_condition(d.condition)
        for d in ps.derived_roles
    }
    index: dict[tuple[str, str], tuple[list[CompiledRule], list[CompiledRule]]] = {}
    actions: dict[str, tuple[str, ...]] = {}
    rules: dict[str, CompiledRule] = {}
    for res in ps.resources:
        rtype = res.name.name
        declared = tuple(dict.fromkeys(a.name for a in res.actions))
        actions[rtype] = declared
        for action in declared:
            index[(rtype, action)] = ([], [])
        for rule in res.rules:
            compiled = _compile_rule(rule, rtype, holders, derived)
            rules[rule.id] = compiled
            targets = declared if rule.actions is None else [a.name for a in rule.actions]
            for action in dict.fromkeys(targets):
                forbids, permits = index[(rtype, action)]
                (forbids if compiled.forbid else permits).append(compiled)
    # INVARIANT: candidate order is by rule id, so results never depend on file order.
    frozen = {
        key: Candidates(tuple(sorted(f, key=lambda r: r.id)), tuple(sorted(p, key=lambda r: r.id)))
        for key, (f, p) in index.items()
    }
    return CompiledPolicySet(
        version=ps.version,
        index=MappingProxyType(frozen),
        derived=MappingProxyType(derived),
        actions=MappingProxyType(actions),
        roles=MappingProxyType(closure),
        rules=MappingProxyType(rules),
        action_dependent_derived=frozenset(
            d.name.name for d in ps.derived_roles if _reads_action(d.condition)
        ),
    )


def _reads_action(expr: ast.Expr) -> bool:
    todo: list[ast.Expr] = [expr]
    while todo:
        e = todo.pop()
        match e:
            case ast.Path(root="action"):
                return True
            case ast.ListExpr(items=items):
                todo.extend(items)
            case ast.Call(args=args):
                todo.extend(args)
            case ast.Not(operand=op):
                todo.append(op)
            case ast.BoolOp(operands=ops):
                todo.extend(ops)
            case ast.Compare(left=left, right=right):
                todo.extend((left, right))
            case ast.Has(target=target):
                todo.append(target)
    return False


def _compile_rule(
    rule: ast.Rule,
    rtype: str,
    holders: Mapping[str, set[str]],
    derived: Mapping[tuple[str, str], Condition],
) -> CompiledRule:
    roles: frozenset[str] | None = None
    named_derived: tuple[str, ...] = ()
    if rule.roles is not None:
        held: set[str] = set()
        for ident in rule.roles:
            if (ident.name, rtype) in derived:
                named_derived += (ident.name,)
            held |= holders.get(ident.name, set())
        roles = frozenset(held)
    return CompiledRule(
        id=rule.id,
        forbid=rule.effect is ast.Effect.FORBID,
        roles=roles,
        derived=named_derived,
        condition=compile_rule_condition(rule.when, rule.unless),
        loc=rule.loc,
        reads_action=any(e is not None and _reads_action(e) for e in (rule.when, rule.unless)),
    )
