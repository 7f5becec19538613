"""Time per decision for one fixed (type, action) as the policy set grows to 10,000 rules.

The scenario's policies (document and folder, 20 rules) stay as they are; N filler
rules are added over N/10 other resource types, ten rules each, with the same
roles, actions and kinds of conditions, and an `owner` derived role per type. The
engine indexes rules by (type, action), so deciding `read` on a document should
cost the same at every N. Cedar, which evaluates every policy on every request, is
timed on the same growth for contrast (on fewer requests, since it slows down).

Run alone with `python -m benchmarks.scaling`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cedarpy

from benchmarks import scenario
from benchmarks.timing import Contender, Outcome, Timings, interleave
from pdp.engine.bindings import Bindings
from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.decide import decide
from pdp.engine.request import Request
from pdp.lang.load import load_texts

SIZES = (10, 100, 1_000, 10_000)
ROUNDS = 7
RULES_PER_TYPE = 10
TYPES_PER_FILE = 100  # ~60 KB a file, far below the loader's 1 MB limit
FIXED = ("document", "read")
# One pass of ours over the requests takes ~3 ms; repeating it keeps scheduler noise small.
OURS_REPEAT = 20
# Cedar takes ~10 ms a request at 10,000 policies; a few dozen requests are enough.
CEDAR_REQUESTS = 50
FLAT = 1.25  # largest/smallest below this reads as flat; reported, never enforced

OUR_FILLER = """\
derived role owner on {t} when resource.owner == subject.id
resource {t} {{
  actions read, update, delete, share
  permit viewer to read
  permit editor to update unless resource.archived
  permit owner  to read, update, delete
  permit admin  to *
  permit any    to read when resource.public
  permit editor to share when subject.level >= 3
  forbid any to update, delete when resource.locked
  forbid any to delete unless context.mfa
  forbid any to read when resource.classification == "secret" and subject.level < 4
  forbid any to * unless resource.tenant == subject.tenant
}}
"""

CEDAR_FILLER = """\
permit (principal, action == Action::"read", resource is {t})
when {{ principal in Role::"viewer" }};
permit (principal, action == Action::"update", resource is {t})
when {{ principal in Role::"editor" }} unless {{ resource.archived }};
permit (principal, action in [Action::"read", Action::"update", Action::"delete"],
        resource is {t})
when {{ resource.owner == principal }};
permit (principal, action, resource is {t}) when {{ principal in Role::"admin" }};
permit (principal, action == Action::"read", resource is {t}) when {{ resource.public }};
permit (principal, action == Action::"share", resource is {t})
when {{ principal in Role::"editor" && principal.level >= 3 }};
forbid (principal, action in [Action::"update", Action::"delete"], resource is {t})
when {{ resource.locked }};
forbid (principal, action == Action::"delete", resource is {t}) unless {{ context.mfa }};
forbid (principal, action == Action::"read", resource is {t})
when {{ resource.classification == "secret" && principal.level < 4 }};
forbid (principal, action, resource is {t}) unless {{ resource.tenant == principal.tenant }};
"""


def filler_types(n: int) -> list[str]:
    """Names of the resource types that carry `n` filler rules, ten each."""
    return [f"t{i:05d}" for i in range(max(1, n // RULES_PER_TYPE))]


def our_files(n: int) -> dict[str, str]:
    """The scenario's policy file plus `n` filler rules spread over several files."""
    types = filler_types(n)
    files = {"scenario.pdp": scenario.POLICY_TEXT}
    for start in range(0, len(types), TYPES_PER_FILE):
        chunk = types[start : start + TYPES_PER_FILE]
        files[f"filler{start // TYPES_PER_FILE:03d}.pdp"] = "".join(
            OUR_FILLER.format(t=t) for t in chunk
        )
    return files


def cedar_text(n: int) -> str:
    """The scenario's Cedar policies plus the same `n` filler rules."""
    types = filler_types(n)
    return scenario.CEDAR_POLICIES + "".join(CEDAR_FILLER.format(t=t.upper()) for t in types)


def our_contender(
    n: int, policy: CompiledPolicySet, requests: Sequence[Request], bindings: Bindings
) -> Contender[list[bool]]:
    """Roles and decision for every request, `OURS_REPEAT` times over."""
    now = scenario.NOW

    def run() -> list[bool]:
        roles_for = bindings.roles_for
        out: list[bool] = []
        for _ in range(OURS_REPEAT):
            out = [
                decide(policy, r, roles_for(r.subject.key, r.resource.scopes(), now)).allowed
                for r in requests
            ]
        return out

    return Contender(f"ours {n}", run, OURS_REPEAT * len(requests))


def cedar_contender(n: int, inputs: scenario.CedarInputs) -> Contender[list[bool]]:
    """cedarpy's per-call decision with a pre-parsed `PolicySet` holding `n` filler rules."""
    policies = cedarpy.PolicySet.from_str(cedar_text(n))
    entities, requests = inputs.entities, inputs.requests

    def run() -> list[bool]:
        is_authorized = cedarpy.is_authorized
        return [is_authorized(r, policies, entities).allowed for r in requests]

    return Contender(f"cedar {n}", run, len(requests))


def main() -> Outcome:
    """Build a policy set per size, check decisions do not change with size, time them."""
    world = scenario.build_world()
    cases = [c for c in scenario.build_cases(world) if (c.thing.type, c.action) == FIXED]
    base = scenario.ours_inputs(world, cases)
    cedar_inputs = scenario.cedar_inputs(world, cases[:CEDAR_REQUESTS])
    print(
        f"== scaling: {FIXED[1]} on a {FIXED[0]}, {len(cases)} requests "
        f"(cedarpy: first {len(cedar_inputs.requests)}), {ROUNDS} rounds, medians =="
    )

    rules: dict[int, int] = {}
    load_seconds: dict[int, float] = {}
    ours: list[Contender[list[bool]]] = []
    cedar: list[Contender[list[bool]]] = []
    for n in SIZES:
        start = time.perf_counter()
        policy = compile_policy_set(load_texts(our_files(n)).unwrap())
        load_seconds[n] = time.perf_counter() - start
        rules[n] = len(policy.rules)
        ours.append(our_contender(n, policy, base.requests, base.bindings))
        cedar.append(cedar_contender(n, cedar_inputs))

    # Filler rules never touch documents, so every size must decide exactly alike.
    first = {c.name: c.run() for c in (*ours, *cedar)}
    expected = first[ours[0].name]
    wrong = [
        name
        for name, out in first.items()
        if out != (expected if name.startswith("ours") else expected[:CEDAR_REQUESTS])
    ]
    if wrong:
        print(f"\nFAIL: decisions differ from `ours {SIZES[0]}` for: {', '.join(wrong)}")
        for i, case in enumerate(cases):
            answers = {name: first[name][i] for name in first if i < len(first[name])}
            if len(set(answers.values())) > 1:
                print(f"  request #{i}: {case.describe()}\n      {answers}")
                break
        return Outcome(False, (f"decisions change with policy size: {', '.join(wrong)}",))

    t = interleave([*ours, *cedar], ROUNDS, warmup=False)
    print_table(t, rules, load_seconds)
    small, large = SIZES[0], SIZES[-1]
    ours_growth = t.ratio(f"ours {small}", f"ours {large}")
    cedar_growth = t.ratio(f"cedar {small}", f"cedar {large}")
    verdict = "flat" if ours_growth < FLAT else "NOT flat"
    line = (
        f"µs/decision at {large:,} vs {small} filler rules: ours {ours_growth:.2f}× ({verdict}), "
        f"cedarpy {cedar_growth:.0f}×"
    )
    print(f"  {line}")
    return Outcome(True, (line,))


def print_table(
    t: Timings[list[bool]], rules: dict[int, int], load_seconds: dict[int, float]
) -> None:
    """One line per size: rules, load time, µs per decision for ours and for cedarpy."""
    print(
        f"  {'filler':>7} {'rules':>7} {'types':>6} {'load+compile':>13} "
        f"{'ours µs/dec':>12} {'spread':>7} {'cedarpy µs/dec':>15}"
    )
    for n in SIZES:
        print(
            f"  {n:>7,} {rules[n]:>7,} {len(filler_types(n)) + 2:>6} {load_seconds[n]:>12.2f}s "
            f"{t.micros(f'ours {n}'):>12.2f} {t.spread(f'ours {n}'):>6.0%} "
            f"{t.micros(f'cedar {n}'):>15.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(0 if main().ok else 1)
