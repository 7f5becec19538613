"""One way in for answering requests: stored attributes, then roles, then the engine.

The engine is pure; this module hands it what a `RoleSource` (the in-memory bindings
or the SQL store) knows about the subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from pdp.engine.bindings import RoleSource
from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide, decide_all
from pdp.engine.decision import Decision
from pdp.engine.request import Request


def enrich(request: Request, source: RoleSource) -> Request:
    """The request with the subject's stored attributes added; stored values win.

    Stored attributes are trusted; a caller may add properties but never override one.
    """
    stored = source.attributes(request.subject.key)
    if not stored:
        return request
    subject = replace(request.subject, properties={**request.subject.properties, **stored})
    return replace(request, subject=subject)


def evaluate(
    policy: CompiledPolicySet,
    requests: Sequence[Request],
    source: RoleSource,
    *,
    now: datetime | None = None,
    explain: bool = False,
) -> list[Decision]:
    """Decide each request in order, looking up roles once per (subject, resource)."""
    clock = now or datetime.now(UTC)
    out: list[Decision] = []
    i = 0
    while i < len(requests):
        # Consecutive requests on the same subject and resource share roles and derived roles.
        j = i + 1
        first = requests[i]
        while j < len(requests) and _same_target(first, requests[j]):
            j += 1
        group = [enrich(r if r.now else replace(r, now=clock), source) for r in requests[i:j]]
        roles = source.roles_for(first.subject.key, first.resource.scopes(), clock)
        if len(group) == 1:
            out.append(decide(policy, group[0], roles, explain=explain))
        else:
            out.extend(decide_all(policy, group, roles, explain=explain))
        i = j
    return out


def _same_target(a: Request, b: Request) -> bool:
    return a.subject == b.subject and a.resource == b.resource and a.context == b.context
