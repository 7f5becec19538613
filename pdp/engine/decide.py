"""decide(): forbid overrides permit, default deny, an erroring forbid denies.

Pure: the compiled policy set, the request and the held roles go in, a `Decision`
comes out. Rule order never matters: candidates are sorted by id at compile time
and every candidate of the deciding kind is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdp.engine.compile import CompiledPolicySet, CompiledRule
from pdp.engine.decision import Decision, Diagnostic, RuleTrace
from pdp.engine.env import Env
from pdp.engine.errors import EvalError, type_error
from pdp.engine.request import Request


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
    candidates = policy.index.get((request.resource.type, request.action.name))
    if candidates is None:
        return _unknown(policy, request, bindings_version)
    if env is None:
        env = Env(request, roles, policy.derived)
    if explain:
        return _decide_explained(policy, request, env, bindings_version)

    reasons: list[str] = []
    diagnostics: list[Diagnostic] = []
    used: set[str] = set()
    for rule in candidates.forbids:
        try:
            if _applies(rule, env, used):
                reasons.append(rule.id)
        except EvalError as exc:
            # Fail closed: a forbid that cannot be evaluated denies.
            reasons.append(rule.id)
            diagnostics.append(Diagnostic(exc.code, exc.message, rule.id))
    if reasons:
        return Decision(
            request.action.name,
            False,
            tuple(reasons),
            tuple(diagnostics),
            policy.version,
            tuple(sorted(used)) if used else (),
            bindings_version=bindings_version,
        )
    for rule in candidates.permits:
        try:
            if _applies(rule, env, used):
                reasons.append(rule.id)
        except EvalError as exc:
            diagnostics.append(Diagnostic(exc.code, exc.message, rule.id))
    return Decision(
        request.action.name,
        bool(reasons),
        tuple(reasons),
        tuple(diagnostics),
        policy.version,
        tuple(sorted(used)) if used else (),
        bindings_version=bindings_version,
    )


def decide_all(
    policy: CompiledPolicySet,
    requests: Sequence[Request],
    roles: frozenset[str] = frozenset(),
    *,
    explain: bool = False,
    bindings_version: str | None = None,
) -> list[Decision]:
    """Decide several actions of one subject on one resource, sharing derived roles."""
    if not requests:
        return []
    env = Env(requests[0], roles, policy.derived)
    env.per_action = policy.action_dependent_derived
    return [
        decide(
            policy,
            r,
            roles,
            explain=explain,
            env=env if i == 0 else env.with_action(r),
            bindings_version=bindings_version,
        )
        for i, r in enumerate(requests)
    ]


def _role_match(rule: CompiledRule, env: Env) -> str | None:
    """The role that lets `rule` consider this subject: held, `any`, derived, or None."""
    if rule.roles is None:
        return "any"
    held = rule.roles & env.roles
    if held:
        return min(held)
    for name in rule.derived:
        if _derived(name, env):
            return name
    return None


def _applies(rule: CompiledRule, env: Env, used: set[str]) -> bool:
    if rule.roles is not None and rule.roles.isdisjoint(env.roles):
        for name in rule.derived:
            if _derived(name, env):
                break
        else:
            return False
    cond = rule.condition
    if cond is None or cond(env):
        if rule.roles is not None:
            used.update(
                rule.roles & env.roles or (n for n in rule.derived if env.derived.get(n) is True)
            )
        return True
    return False


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


def _decide_explained(
    policy: CompiledPolicySet, request: Request, env: Env, bindings_version: str | None
) -> Decision:
    candidates = policy.index[(request.resource.type, request.action.name)]
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
            trace.append(RuleTrace(rule.id, effect, rule.where, None, "not evaluated", False))
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
        request.action.name,
        allowed,
        tuple(reasons),
        tuple(diagnostics),
        policy.version,
        tuple(sorted(used)) if used else (),
        tuple(trace),
        bindings_version,
    )


def _unknown(policy: CompiledPolicySet, request: Request, bindings_version: str | None) -> Decision:
    rtype, action = request.resource.type, request.action.name
    if rtype not in policy.actions:
        diag = Diagnostic("unknown_resource_type", f"resource type `{rtype}` is not declared")
    else:
        diag = Diagnostic(
            "unknown_action", f"action `{action}` is not declared on resource type `{rtype}`"
        )
    return Decision(action, False, (), (diag,), policy.version, bindings_version=bindings_version)
