"""One way in for answering requests: stored attributes, then roles, then the engine.

The engine is pure; this module hands it what a `RoleSource` (the in-memory bindings
or the SQL store) knows about the subject. When the store fails (for instance the
database is down past the cache's staleness bound) every affected request is denied
with the store error's code as diagnostic (`store_unavailable`): never allowed
because data is missing. Sources that know their revision (`bindings_version`) have
it copied into each decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pdp.engine.bindings import RoleSource
from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide, decide_all
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Request, Subject
from pdp.store.errors import StoreError


def enrich(subject: Subject, source: RoleSource) -> Subject:
    """The subject with its stored attributes added; stored values win.

    Stored attributes are trusted; a caller may add properties but never override one.
    """
    stored = source.attributes(subject.key)
    if not stored:
        return subject
    return Subject(subject.type, subject.id, {**subject.properties, **stored})


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
        try:
            # The group shares its subject, so stored attributes are merged once.
            subject = enrich(first.subject, source)
            group = [
                r
                if r.subject is subject and r.now
                else Request(subject, r.action, r.resource, r.context, r.now or clock)
                for r in requests[i:j]
            ]
            roles = source.roles_for(first.subject.key, first.resource.scopes(), clock)
            # Read after the lookup: the revision those roles came from (a store's first
            # lookup is what tells it the revision at all).
            version: str | None = getattr(source, "bindings_version", None)
        except StoreError as exc:
            # Fail closed: without the subject's roles and attributes nothing is allowed.
            out.extend(_store_failed(policy, r, exc) for r in requests[i:j])
            i = j
            continue
        if len(group) == 1:
            decided = [decide(policy, group[0], roles, explain=explain, bindings_version=version)]
        else:
            decided = decide_all(policy, group, roles, explain=explain, bindings_version=version)
        out.extend(decided)
        i = j
    return out


def _store_failed(policy: CompiledPolicySet, request: Request, exc: StoreError) -> Decision:
    """A deny saying why: `store_unavailable` when the database cannot be reached."""
    return Decision(
        request.action.name,
        False,
        (),
        (Diagnostic(exc.code, exc.message),),
        policy.version,
    )


def _same_target(a: Request, b: Request) -> bool:
    return a.subject == b.subject and a.resource == b.resource and a.context == b.context
