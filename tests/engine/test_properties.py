"""Property tests of the decision rules over random small policy sets and requests.

A policy set is generated as a model (roles with inclusion, one derived role, rules with
random effects, roles, actions and conditions over a few attributes), rendered to policy
text, and decided by the engine. The properties: adding a forbid never allows, adding a
permit never denies, the order of rules and files never matters, no applicable permit
means deny, an erroring forbid denies; and the engine agrees with a tiny reference
interpreter written here from the documented rules.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide, decide_actions
from pdp.engine.decision import Decision
from pdp.engine.request import Request
from tests.helpers import compile_files, request

# Each example decides several requests, since compiling a policy set costs far more
# than deciding; 100 policy sets x up to 8 requests per property keeps the file near 10 s.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

ROLES = ("viewer", "editor", "admin", "auditor")
ACTIONS = {"doc": ("read", "update", "share"), "img": ("view", "edit")}
DERIVED = "owner"  # defined on `doc` only
MISSING = object()

# --- the model -------------------------------------------------------------------------

# Expressions: ("lit", bool) | ("attr", name) | ("eq", name, str) | ("has", name)
#              | ("not", e) | ("and" | "or", (e, e, ...))
Expr = tuple[Any, ...]


@dataclass(frozen=True)
class RuleM:
    id: str
    forbid: bool
    rtype: str
    roles: tuple[str, ...] | None  # None: `any`
    actions: tuple[str, ...] | None  # None: `*`
    when: Expr | None
    unless: Expr | None


@dataclass(frozen=True)
class PolicyM:
    includes: Mapping[str, tuple[str, ...]]
    derived: Expr
    rules: tuple[RuleM, ...]

    def with_rule(self, rule: RuleM) -> PolicyM:
        return replace(self, rules=(*self.rules, rule))


def render_expr(e: Expr) -> str:
    kind = e[0]
    if kind == "lit":
        return "true" if e[1] else "false"
    if kind == "attr":
        return f"resource.{e[1]}"
    if kind == "eq":
        return f'subject.{e[1]} == "{e[2]}"'
    if kind == "has":
        return f"resource has {e[1]}"
    if kind == "not":
        return f"not ({render_expr(e[1])})"
    return f" {kind} ".join(f"({render_expr(x)})" for x in e[1])


def render_rule(r: RuleM) -> str:
    roles = "any" if r.roles is None else ", ".join(r.roles)
    actions = "*" if r.actions is None else ", ".join(r.actions)
    text = f'  @id("{r.id}") {"forbid" if r.forbid else "permit"} {roles} to {actions}'
    if r.when is not None:
        text += f" when {render_expr(r.when)}"
    if r.unless is not None:
        text += f" unless {render_expr(r.unless)}"
    return text + "\n"


def render(p: PolicyM, rng: random.Random | None = None, n_files: int = 1) -> dict[str, str]:
    """The policy set as files; with `rng`, every order and the split into files is random."""
    roles = [
        f"role {r}" + (f" : {', '.join(p.includes[r])}" if p.includes[r] else "") + "\n"
        for r in ROLES
    ]
    chunks = ["".join(roles), f"derived role {DERIVED} on doc when {render_expr(p.derived)}\n"]
    for rtype, actions in ACTIONS.items():
        rules = [r for r in p.rules if r.rtype == rtype]
        if rng is not None:
            rng.shuffle(rules)
        body = "".join(render_rule(r) for r in rules)
        chunks.append(f"resource {rtype} {{\n  actions {', '.join(actions)}\n{body}}}\n")
    if rng is None:
        return {"policy.pdp": "".join(chunks)}
    rng.shuffle(roles)
    # each role on its own, so that roles land in different files and after their use
    chunks = roles + chunks[1:]
    rng.shuffle(chunks)
    files: dict[str, str] = {}
    names = [f"{rng.choice('abcxyz')}{i}.pdp" for i in range(n_files)]
    for chunk in chunks:
        name = rng.choice(names)
        files[name] = files.get(name, "") + chunk
    return files


def compile_model(p: PolicyM) -> CompiledPolicySet:
    return _compile_text(render(p)["policy.pdp"])


@functools.lru_cache(maxsize=256)
def _compile_text(text: str) -> CompiledPolicySet:
    return compile_files({"policy.pdp": text})


# --- strategies ----------------------------------------------------------------------

atoms = st.one_of(
    st.tuples(st.just("lit"), st.booleans()),
    st.tuples(st.just("attr"), st.sampled_from(["b0", "b1"])),
    st.tuples(st.just("eq"), st.just("s0"), st.sampled_from(["x", "y"])),
    st.tuples(st.just("has"), st.sampled_from(["b0", "b1"])),
)
exprs: st.SearchStrategy[Expr] = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(
            st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3).map(tuple)
        ),
    ),
    max_leaves=4,
)


# Strategies are built once: building them inside a draw costs more than the test.
_ROLE_SPECS = {
    rtype: st.one_of(
        st.none(),
        # the derived role, alone or with a held one, often enough to matter
        *(
            [st.just((DERIVED,)), st.sampled_from(ROLES).map(lambda r: (r, DERIVED))]
            if rtype == "doc"
            else []
        ),
        st.lists(st.sampled_from(ROLES), min_size=1, max_size=2, unique=True).map(tuple),
    )
    for rtype in ACTIONS
}
_ACTION_SPECS = {
    rtype: st.one_of(
        st.none(), st.lists(st.sampled_from(actions), min_size=1, unique=True).map(tuple)
    )
    for rtype, actions in ACTIONS.items()
}
_CONDITIONS = st.one_of(st.none(), exprs)
_RTYPES = st.sampled_from(["doc", "doc", "img"])
_INCLUDES = [st.lists(st.sampled_from(ROLES[:i]), unique=True).map(tuple) for i in range(1, 4)]


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> RuleM:
    rtype = draw(_RTYPES)
    return RuleM(
        rule_id,
        draw(st.booleans()),
        rtype,
        draw(_ROLE_SPECS[rtype]),
        draw(_ACTION_SPECS[rtype]),
        draw(_CONDITIONS),
        draw(_CONDITIONS),
    )


@st.composite
def policies(draw: st.DrawFn) -> PolicyM:
    includes = {ROLES[0]: ()} | {role: draw(_INCLUDES[i]) for i, role in enumerate(ROLES[1:])}
    n = draw(st.integers(min_value=1, max_value=8))
    return PolicyM(includes, draw(exprs), tuple(draw(rules(f"r{i}")) for i in range(n)))


attr_values = st.sampled_from([True, False, MISSING, None, 1])
_ACTION_OF = {rtype: st.sampled_from(actions) for rtype, actions in ACTIONS.items()}
_S0 = st.sampled_from(["x", "y", MISSING, 5])
_HELD = st.lists(st.sampled_from((*ROLES, "ghost")), max_size=2)


@dataclass(frozen=True)
class Ask:
    request: Request
    held: frozenset[str]


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    rtype = draw(_RTYPES)
    action = draw(_ACTION_OF[rtype])
    props = {k: v for k in ("b0", "b1") if (v := draw(attr_values)) is not MISSING}
    s0 = draw(_S0)
    held = frozenset(draw(_HELD))
    req = request(
        action,
        resource_type=rtype,
        resource=props,
        subject={} if s0 is MISSING else {"s0": s0},
    )
    return Ask(req, held)


ask_lists = st.lists(asks(), min_size=2, max_size=8)


def run(policy: CompiledPolicySet, ask: Ask) -> Decision:
    return decide(policy, ask.request, ask.held)


def outcome(d: Decision) -> tuple[object, ...]:
    """Everything of a decision but the policy version."""
    return (d.allowed, d.reasons, d.diagnostics, d.roles_used)


# --- a reference interpreter, straight from docs/language.md ---------------------------


class Err(Exception):
    pass


def ev(e: Expr, req: Request) -> object:
    props, sprops = req.resource.properties, req.subject.properties
    kind = e[0]
    if kind == "lit":
        return e[1]
    if kind == "attr":
        if props.get(e[1]) is None:
            raise Err
        return props[e[1]]
    if kind == "eq":
        if sprops.get(e[1]) is None:
            raise Err
        value = sprops[e[1]]
        if type(value) is not str:  # a string literal compared with another kind
            raise Err
        return value == e[2]
    if kind == "has":
        return props.get(e[1]) is not None
    if kind == "not":
        return not as_bool(ev(e[1], req))
    stop = kind == "or"
    for x in e[1]:
        if as_bool(ev(x, req)) is stop:
            return stop
    return not stop


def as_bool(v: object) -> bool:
    if v is True or v is False:
        return v
    raise Err


def closure(p: PolicyM, role: str) -> set[str]:
    seen, todo = {role}, list(p.includes[role])
    while todo:
        r = todo.pop()
        if r not in seen:
            seen.add(r)
            todo.extend(p.includes[r])
    return seen


def considers(p: PolicyM, r: RuleM, ask: Ask) -> bool:
    """Raises Err when only a derived role could match and it errs."""
    if r.roles is None:
        return True
    for held in ask.held:
        if held in ROLES and closure(p, held) & set(r.roles):
            return True
    if DERIVED in r.roles:
        return as_bool(ev(p.derived, ask.request))
    return False


def applies(p: PolicyM, r: RuleM, ask: Ask) -> bool:
    if not considers(p, r, ask):
        return False
    if r.when is not None and not as_bool(ev(r.when, ask.request)):
        return False
    return not (r.unless is not None and as_bool(ev(r.unless, ask.request)))


def reference(p: PolicyM, ask: Ask) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(allowed, reasons, ids of rules with diagnostics)."""
    action = ask.request.action.name
    candidates = sorted(
        (
            r
            for r in p.rules
            if r.rtype == ask.request.resource.type and (r.actions is None or action in r.actions)
        ),
        key=lambda r: r.id,
    )
    reasons: list[str] = []
    errors: list[str] = []
    for r in (r for r in candidates if r.forbid):
        try:
            if applies(p, r, ask):
                reasons.append(r.id)
        except Err:
            reasons.append(r.id)
            errors.append(r.id)
    if reasons:
        return False, tuple(reasons), tuple(errors)
    for r in (r for r in candidates if not r.forbid):
        try:
            if applies(p, r, ask):
                reasons.append(r.id)
        except Err:
            errors.append(r.id)
    return bool(reasons), tuple(reasons), tuple(errors)


# --- the properties --------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(policies(), ask_lists)
def test_engine_agrees_with_the_reference_interpreter(p: PolicyM, asks: list[Ask]) -> None:
    policy = compile_model(p)
    for ask in asks:
        d = run(policy, ask)
        got = (d.allowed, d.reasons, tuple(x.rule_id for x in d.diagnostics))
        assert got == reference(p, ask)


@PROPERTY_SETTINGS
@given(policies(), rules("added"), ask_lists)
def test_adding_a_forbid_never_turns_a_deny_into_an_allow(
    p: PolicyM, extra: RuleM, asks: list[Ask]
) -> None:
    without, with_forbid = compile_model(p), compile_model(p.with_rule(replace(extra, forbid=True)))
    for ask in asks:
        before, after = run(without, ask), run(with_forbid, ask)
        if not before.allowed:
            assert not after.allowed
        if after.allowed:
            assert before.allowed and after.reasons == before.reasons


@PROPERTY_SETTINGS
@given(policies(), rules("added"), ask_lists)
def test_adding_a_permit_never_turns_an_allow_into_a_deny(
    p: PolicyM, extra: RuleM, asks: list[Ask]
) -> None:
    without, with_permit = (
        compile_model(p),
        compile_model(p.with_rule(replace(extra, forbid=False))),
    )
    for ask in asks:
        before, after = run(without, ask), run(with_permit, ask)
        if before.allowed:
            assert after.allowed
            assert set(before.reasons) <= set(after.reasons)


@PROPERTY_SETTINGS
@given(policies(), st.randoms(use_true_random=False), st.integers(1, 4), ask_lists)
def test_shuffling_rules_or_files_never_changes_a_decision(
    p: PolicyM, rng: random.Random, n_files: int, asks: list[Ask]
) -> None:
    shuffled = compile_files(render(p, rng, n_files))
    original = compile_model(p)
    for ask in asks:
        assert outcome(run(shuffled, ask)) == outcome(run(original, ask))


@PROPERTY_SETTINGS
@given(policies(), ask_lists)
def test_no_applicable_permit_means_deny(p: PolicyM, asks: list[Ask]) -> None:
    policy = compile_model(p)
    only_forbids = compile_model(replace(p, rules=tuple(r for r in p.rules if r.forbid)))
    permits = {r.id for r in p.rules if not r.forbid}
    for ask in asks:
        d = run(policy, ask)
        if d.allowed:
            assert d.reasons and set(d.reasons) <= permits
        else:
            assert not set(d.reasons) & permits
        assert not run(only_forbids, ask).allowed


@PROPERTY_SETTINGS
@given(policies(), asks(), st.booleans())
def test_an_erroring_forbid_means_deny(p: PolicyM, ask: Ask, on_star: bool) -> None:
    rtype, action = ask.request.resource.type, ask.request.action.name
    boom = RuleM(
        "boom",
        True,
        rtype,
        None,
        None if on_star else (action,),
        ("attr", "never_set"),
        None,
    )
    d = run(compile_model(p.with_rule(boom)), ask)
    assert not d.allowed
    assert "boom" in d.reasons
    assert any(x.rule_id == "boom" and x.code == "missing_attribute" for x in d.diagnostics)


@PROPERTY_SETTINGS
@given(policies(), ask_lists)
def test_decide_actions_and_explain_agree_with_decide(p: PolicyM, asks: list[Ask]) -> None:
    policy = compile_model(p)
    for ask in asks:
        req = ask.request
        actions = ACTIONS[req.resource.type]
        reqs = [replace(req, action=replace(req.action, name=a)) for a in actions]
        together = decide_actions(
            policy,
            req.subject,
            req.resource,
            req.context,
            req.now,
            [r.action for r in reqs],
            ask.held,
        )
        alone = [decide(policy, r, ask.held) for r in reqs]
        assert [outcome(d) for d in together] == [outcome(d) for d in alone]
        explained = decide(policy, req, ask.held, explain=True)
        plain = decide(policy, req, ask.held)
        assert (explained.allowed, explained.reasons) == (plain.allowed, plain.reasons)
        assert {t.rule_id for t in explained.trace if t.applied} >= set(plain.reasons)
