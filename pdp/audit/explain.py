"""Re-deriving a recorded decision against the policy version that made it.

Possible when the policies at hand are that version and the record holds the
request's attributes (`audit.include`): the request is rebuilt from the record, its
clock set to the record's time, the roles to the roles the decision used, and the
engine runs again with `explain=True`. Redacted fields are left out, so a condition
reading one errors rather than seeing `[redacted]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pdp.audit.record import REDACTED, DecisionRecord
from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide
from pdp.engine.decision import Decision
from pdp.engine.request import Action, Request, Resource, Subject

# Denials the server made without asking the policies; re-deriving them means nothing.
NOT_BY_POLICY = (
    "invalid_request",
    "store_unavailable",
    "internal_error",
    "audit_unavailable",
    # Refused before an evaluation (the Envoy endpoint, raw credentials on pdp.v1).
    "unauthenticated",
    "no_route",
    "bad_path",
    "bad_request",
)


@dataclass
class Rederived:
    """The decision made again, or why it cannot be."""

    decision: Decision | None
    why_not: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.decision is not None and self.decision.allowed == self.recorded_allowed

    recorded_allowed: bool = False


def rederive(record: DecisionRecord, policy: CompiledPolicySet, where: str) -> Rederived:
    """Decide `record`'s request again with `policy` (loaded from `where`)."""
    skipped = [d.code for d in record.diagnostics if d.code in NOT_BY_POLICY]
    if skipped or not record.subject_type:
        code = skipped[0] if skipped else "invalid_request"
        return Rederived(None, f"this deny was not made by the policies (`{code}`)")
    if policy.version != record.policy_version:
        return Rederived(
            None,
            f"this decision was made by policy version {record.policy_version}, which is "
            f"not available: the policies in {where} are version {policy.version}",
        )
    missing = [
        name
        for name, value in (
            ("subject", record.subject_properties),
            ("action", record.action_properties),
            ("resource", record.resource_properties),
            ("context", record.context),
        )
        if value is None
    ]
    if missing:
        return Rederived(
            None,
            "the record holds no attributes for "
            + ", ".join(missing)
            + " (they are recorded only for the sections audit.include names), so the "
            "request cannot be rebuilt",
        )
    redacted: list[str] = []
    subject_props = _unredacted(record.subject_properties or {}, "subject.properties", redacted)
    action_props = _unredacted(record.action_properties or {}, "action.properties", redacted)
    resource_props = _unredacted(record.resource_properties or {}, "resource.properties", redacted)
    context = _unredacted(record.context or {}, "context", redacted)
    ancestors = tuple(a for a in record.resource_ancestors or () if a != REDACTED)
    if record.subject_id == REDACTED or record.resource_id == REDACTED:
        return Rederived(None, "the subject or resource id was redacted")
    request = Request(
        Subject(record.subject_type, record.subject_id, subject_props),
        Action(record.action, action_props),
        Resource(record.resource_type, record.resource_id, resource_props, ancestors),
        context,
        record.time,
    )
    decision = decide(policy, request, frozenset(record.roles), explain=True)
    out = Rederived(decision, recorded_allowed=record.allowed)
    out.notes.append(
        "roles: the roles the decision used ("
        + (", ".join(record.roles) or "none")
        + "); clock: the record's time"
    )
    if redacted:
        out.notes.append("left out, as they were redacted: " + ", ".join(redacted))
    if not out.matches:
        out.notes.append(
            "the re-derived decision differs from the recorded one"
            + (" (a redacted field may be why)" if redacted else "")
        )
    return out


def _unredacted(value: Mapping[str, Any], path: str, found: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        where = f"{path}.{k}"
        if v == REDACTED:
            found.append(where)
        else:
            out[k] = _unredacted_value(v, where, found)
    return out


def _unredacted_value(v: Any, path: str, found: list[str]) -> Any:
    """`v` with redacted values left out, records and lists (`context.items.ssn`) alike."""
    if isinstance(v, Mapping):
        return _unredacted(v, path, found)
    if isinstance(v, list):
        kept = []
        for i, item in enumerate(v):
            if item == REDACTED:
                found.append(f"{path}[{i}]")
            else:
                kept.append(_unredacted_value(item, f"{path}[{i}]", found))
        return kept
    return v
