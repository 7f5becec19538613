"""One way in for answering requests: stored attributes, then roles, then the engine.

The engine is pure; this module hands it what a `RoleSource` (the in-memory bindings
or the SQL store) knows about the subject. When the store fails (for instance the
database is down past the cache's staleness bound) every affected request is denied
with the store error's code as diagnostic (`store_unavailable`): never allowed
because data is missing. Sources that know their revision (`bindings_version`) have
it copied into each decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from pdp.engine.bindings import RoleSource
from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide_actions
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Request, Resource, Subject
from pdp.store.errors import StoreError


def enrich(subject: Subject, source: RoleSource) -> Subject:
    """The subject with its stored attributes added; stored values win.

    Stored attributes are trusted; a caller may add properties but never override one.
    """
    stored = source.attributes(subject.key)
    if not stored:
        return subject
    return Subject(subject.type, subject.id, {**subject.properties, **stored})


def as_seen(subject: Subject, seen: dict[int, Subject], source: RoleSource) -> Subject:
    """`subject` as the engine saw it, stored attributes added: from `seen` (which
    `evaluate` fills), else read now and kept there; itself when the store fails.

    What the audit log records, so that a decision can be re-derived from its record.
    """
    full = seen.get(id(subject))
    if full is None:
        try:
            full = enrich(subject, source)
        except StoreError:
            full = subject
        seen[id(subject)] = full
    return full


def evaluate(
    policy: CompiledPolicySet,
    requests: Sequence[Request],
    source: RoleSource,
    *,
    now: datetime | None = None,
    explain: bool = False,
    seen: dict[int, Subject] | None = None,
) -> list[Decision]:
    """Decide each request in order, looking up roles once per (subject, resource).

    Consecutive requests on the same subject, resource and context form a group that
    shares its role lookup, its evaluation state and the derived roles that do not
    read the action; the group's clock is its first request's `now`, else `now`.
    A subject's stored attributes are read once per call (per subject object).
    `seen`, when given, is filled with the subject as the engine saw it (stored
    attributes added), by `id()` of each request's subject: what the audit log records.
    """
    clock = now or datetime.now(UTC)
    out: list[Decision] = []
    # By identity: a batch's evaluations usually share one Subject object, and the
    # requests keep every key's object alive for the whole call.
    enriched: dict[int, Subject] = {} if seen is None else seen
    n = len(requests)
    i = 0
    while i < n:
        first = requests[i]
        subject, resource, context = first.subject, first.resource, first.context
        j = i + 1
        while j < n:
            r = requests[j]
            if not (
                (r.subject is subject or _same_subject(r.subject, subject))
                and (r.resource is resource or _same_resource(r.resource, resource))
                and (r.context is context or _same_value(r.context, context))
            ):
                break
            j += 1
        try:
            full = enriched.get(id(subject))
            if full is None:
                full = enriched[id(subject)] = enrich(subject, source)
            roles = source.roles_for(subject.key, resource.scopes(), clock)
            # Read after the lookup: the revision those roles came from (a store's first
            # lookup is what tells it the revision at all).
            version: str | None = getattr(source, "bindings_version", None)
        except StoreError as exc:
            # Fail closed: without the subject's roles and attributes nothing is allowed.
            out.extend(_store_failed(policy, r, exc) for r in requests[i:j])
            i = j
            continue
        if seen is not None:
            for r in requests[i + 1 : j]:
                seen.setdefault(id(r.subject), full)
        out.extend(
            decide_actions(
                policy,
                full,
                resource,
                context,
                first.now or clock,
                [r.action for r in requests[i:j]] if j > i + 1 else [first.action],
                roles,
                explain=explain,
                bindings_version=version,
            )
        )
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


def _same_subject(a: Subject, b: Subject) -> bool:
    return a.id == b.id and a.type == b.type and _same_value(a.properties, b.properties)


def _same_resource(a: Resource, b: Resource) -> bool:
    return (
        a.id == b.id
        and a.type == b.type
        and a.ancestors == b.ancestors
        and _same_value(a.properties, b.properties)
    )


def _same_value(a: object, b: object) -> bool:
    """Equal, with the same types throughout: values no condition can tell apart.

    Stricter than `==`, under which `1 == True == 1.0` and a list equals a tuple: the
    group is decided on its first request's values only.
    """
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping)
        return len(a) == len(b) and all(k in b and _same_value(v, b[k]) for k, v in a.items())
    if t is list or t is tuple:
        assert isinstance(a, list | tuple) and isinstance(b, list | tuple)
        return len(a) == len(b) and all(map(_same_value, a, b))
    return a == b
