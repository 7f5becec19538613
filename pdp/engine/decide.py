"""decide(): forbid overrides permit, default deny, an erroring forbid denies.

Pure: the compiled policy set, the request and the held roles go in, a `Decision`
comes out. Rule order never matters: candidates are sorted by id at compile time
and every candidate of the deciding kind is evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pdp.engine.compile import Candidates, CompiledPolicySet, CompiledRule
from pdp.engine.decision import Decision, Diagnostic, RuleTrace
from pdp.engine.env import Condition, Env
from pdp.engine.errors import EvalError, type_error
from pdp.engine.request import Action, Request, Resource, Subject


def decide(
    policy: CompiledPolicySet,
    request: Request,
    roles: frozenset[str] = frozenset(),
    *,
    explain: bool = False,
    env: Env | None = None,
    bindings_version: str | None = None,
) -> Decision:
    """Decide one request. `roles` are the roles the subject holds on the resource.

    `bindings_version`, the revision the roles were read at, is only carried along.
    """
    action = request.action.name
    candidates = policy.index.get((request.resource.type, action))
    if candidates is None:
        return _unknown(policy, request.resource.type, action, bindings_version)
    if env is None:
        env = Env.of(request, roles, policy.derived)
    if explain:
        return _decide_explained(policy, candidates, action, env, bindings_version)
    return _decide(policy.version, candidates, action, env, bindings_version)


def decide_actions(
    policy: CompiledPolicySet,
    subject: Subject,
    resource: Resource,
    context: Mapping[str, Any],
    now: datetime | None,
    actions: Sequence[Action],
    roles: frozenset[str] = frozenset(),
    *,
    explain: bool = False,
    bindings_version: str | None = None,
) -> list[Decision]:
    """Decide each of `actions` for one subject on one resource in one context.

    The batch path: one `Env` serves every action (see `Env.set_action`), so the
    derived roles and the rule conditions that do not read `action` are evaluated at
    most once for all of them. Every action is still decided over its own candidates.
    """
    if not actions:
        return []
    env = Env(
        subject,
        actions[0],
        resource,
        context,
        now,
        roles,
        policy.derived,
        policy.action_dependent_derived,
    )
    if len(actions) > 1:
        env.shared = {}
    index, version, rtype = policy.index, policy.version, resource.type
    out: list[Decision] = []
    first = True
    for action in actions:
        if not first:
            env.set_action(action)
        first = False
        name = action.name
        candidates = index.get((rtype, name))
        if candidates is None:
            out.append(_unknown(policy, rtype, name, bindings_version))
        elif explain:
            out.append(_decide_explained(policy, candidates, name, env, bindings_version))
        else:
            out.append(_decide(version, candidates, name, env, bindings_version))
    return out


def _decide(
    version: str, candidates: Candidates, action: str, env: Env, bindings_version: str | None
) -> Decision:
    """Forbids first; any that applies (or errs) denies. Otherwise any applying permit allows.

    `_applies` is written out in both loops: a call per candidate rule was a fifth of
    the cost of a decision.
    """
    # Shared conditions are read inline below; `_shared` is called only to compute a
    # value (or raise a kept error). Derived roles are looked at only for a rule whose
    # roles the subject does not hold.
    held, shared = env.roles, env.shared
    reasons: list[str] = []
    diagnostics: list[Diagnostic] = []
    used: set[str] | None = None
    for rule_id, roles, derived, cond, share in candidates.forbid_steps:
        try:
            if roles is not None and roles.isdisjoint(held):
                if not derived or _derived_role_held(derived, env) is None:
                    continue
            if cond is not None:
                if share is None or shared is None:
                    if not cond(env):
                        continue
                else:
                    ok = shared.get(share)
                    if ok is False or (ok is not True and not _shared(share, cond, env, shared)):
                        continue
        except EvalError as exc:
            # Fail closed: a forbid that cannot be evaluated denies.
            reasons.append(rule_id)
            diagnostics.append(Diagnostic(exc.code, exc.message, rule_id))
            continue
        reasons.append(rule_id)
        if roles is not None:
            used = _used(used, roles, derived, env)
    if reasons:
        return Decision(
            action,
            False,
            tuple(reasons),
            tuple(diagnostics) if diagnostics else (),
            version,
            tuple(sorted(used)) if used else (),
            (),
            bindings_version,
        )
    for rule_id, roles, derived, cond, share in candidates.permit_steps:
        try:
            if roles is not None and roles.isdisjoint(held):
                if not derived or _derived_role_held(derived, env) is None:
                    continue
            if cond is not None:
                if share is None or shared is None:
                    if not cond(env):
                        continue
                else:
                    ok = shared.get(share)
                    if ok is False or (ok is not True and not _shared(share, cond, env, shared)):
                        continue
        except EvalError as exc:
            # A permit that cannot be evaluated does not apply; the error is reported.
            diagnostics.append(Diagnostic(exc.code, exc.message, rule_id))
            continue
        reasons.append(rule_id)
        if roles is not None:
            used = _used(used, roles, derived, env)
    return Decision(
        action,
        bool(reasons),
        tuple(reasons) if reasons else (),
        tuple(diagnostics) if diagnostics else (),
        version,
        tuple(sorted(used)) if used else (),
        (),
        bindings_version,
    )


def _shared(key: str, cond: Condition, env: Env, shared: dict[str, bool | Exception]) -> object:
    """The condition's value for this subject, resource and context, computed once.

    Only for conditions that do not read `action` (see `Step`); an error is kept and
    raised again, so each decision still reports it.
    """
    known = shared.get(key)
    if known is None:
        try:
            known = shared[key] = bool(cond(env))
        except EvalError as exc:
            shared[key] = exc
            raise
        return known
    if isinstance(known, Exception):
        # Without its old traceback, which would otherwise grow with every raise.
        raise known.with_traceback(None)
    return known


def _used(
    used: set[str] | None, roles: frozenset[str], derived: tuple[str, ...], env: Env
) -> set[str]:
    """`used` plus the roles by which an applying rule considered the subject.

    The held roles the rule names, or else the derived roles it names that hold.
    """
    if used is None:
        used = set()
    used.update(roles & env.roles or (n for n in derived if env.derived.get(n) is True))
    return used


def _role_match(rule: CompiledRule, env: Env) -> str | None:
    """The role that lets `rule` consider this subject: held, `any`, derived, or None."""
    if rule.roles is None:
        return "any"
    held = rule.roles & env.roles
    if held:
        return min(held)
    return _derived_role_held(rule.derived, env)


def _derived_role_held(names: tuple[str, ...], env: Env) -> str | None:
    """The first of the derived roles `names` the subject holds, or None.

    One that holds wins over one that cannot be evaluated, wherever each is named, so
    the order of a rule's roles never changes a decision; the error is raised only
    when none holds.
    """
    known_derived = env.derived
    error: EvalError | None = None
    for name in names:
        known = known_derived.get(name)
        if known is True:
            return name
        if known is False:
            continue
        try:
            if _derived(name, env):
                return name
        except EvalError as exc:
            error = error or exc
    if error is not None:
        raise error
    return None


def _derived(name: str, env: Env) -> bool:
    """Whether the subject holds derived role `name` here, evaluated once per request."""
    known = env.derived.get(name)
    if known is True or known is False:
        return known
    if isinstance(known, EvalError):
        raise known
    cond = env.derived_conditions.get((name, env.resource.type))
    try:
        value = cond(env) if cond is not None else False
        if value is not True and value is not False:
            raise type_error(f"derived role `{name}` must be true or false", value)
    except EvalError as exc:
        err = EvalError(exc.code, f"derived role `{name}`: {exc.message}")
        env.derived[name] = err
        raise err from None
    env.derived[name] = value
    return value


# The condition of a rule none of whose roles the subject holds (derived roles included).
NO_ROLE = "not evaluated: no role of the rule held"


def _decide_explained(
    policy: CompiledPolicySet,
    candidates: Candidates,
    action: str,
    env: Env,
    bindings_version: str | None,
) -> Decision:
    trace: list[RuleTrace] = []
    forbid_reasons: list[str] = []
    permit_reasons: list[str] = []
    diagnostics: list[Diagnostic] = []
    used: set[str] = set()
    for rule in (*candidates.forbids, *candidates.permits):
        effect = "forbid" if rule.forbid else "permit"
        if not rule.forbid and forbid_reasons:
            # As in the plain path: once a forbid denies, permits are not evaluated.
            trace.append(RuleTrace(rule.id, effect, rule.where, None, "skipped: denied", False))
            continue
        try:
            role = _role_match(rule, env)
        except EvalError as exc:
            diagnostics.append(Diagnostic(exc.code, exc.message, rule.id))
            trace.append(
                RuleTrace(rule.id, effect, rule.where, None, f"error: {exc.message}", rule.forbid)
            )
            if rule.forbid:
                forbid_reasons.append(rule.id)
            continue
        if role is None:
            trace.append(RuleTrace(rule.id, effect, rule.where, None, NO_ROLE, False))
            continue
        if rule.condition is None:
            outcome, applied = "none", True
        else:
            try:
                applied = bool(rule.condition(env))
                outcome = "true" if applied else "false"
            except EvalError as exc:
                diagnostics.append(Diagnostic(exc.code, exc.message, rule.id))
                outcome, applied = f"error: {exc.message}", rule.forbid
        trace.append(RuleTrace(rule.id, effect, rule.where, role, outcome, applied))
        if applied:
            (forbid_reasons if rule.forbid else permit_reasons).append(rule.id)
            if rule.roles is not None:
                used.update(rule.roles & env.roles or {role})
    reasons = forbid_reasons or permit_reasons
    allowed = not forbid_reasons and bool(permit_reasons)
    return Decision(
        action,
        allowed,
        tuple(reasons),
        tuple(diagnostics),
        policy.version,
        tuple(sorted(used)) if used else (),
        tuple(trace),
        bindings_version,
    )


def _unknown(
    policy: CompiledPolicySet, rtype: str, action: str, bindings_version: str | None
) -> Decision:
    if rtype not in policy.actions:
        diag = Diagnostic("unknown_resource_type", f"resource type `{rtype}` is not declared")
    else:
        diag = Diagnostic(
            "unknown_action", f"action `{action}` is not declared on resource type `{rtype}`"
        )
    return Decision(action, False, (), (diag,), policy.version, bindings_version=bindings_version)
