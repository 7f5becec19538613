"""Decisions are values: what was decided, by which rules, and what went wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem met while deciding: a rule whose condition erred, or a bad request."""

    code: str
    message: str
    rule_id: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "rule_id": self.rule_id}


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """For `--explain`: one candidate rule and why it applied or not."""

    rule_id: str
    effect: str
    where: str
    role: str | None  # the role that matched, `any`, or None when none did
    condition: str  # "none", "true", "false" or "error: ..."
    applied: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one action: allowed, the deciding rule ids, and diagnostics.

    `reasons` holds the forbids that denied, or the permits that allowed, or nothing
    for a default deny.
    """

    action: str
    allowed: bool
    reasons: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...]
    policy_version: str
    roles_used: tuple[str, ...] = ()
    trace: tuple[RuleTrace, ...] = ()
    # The role store's revision the roles were read at; None for in-memory bindings.
    bindings_version: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "decision": self.allowed,
            "action": self.action,
            "reasons": list(self.reasons),
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "policy_version": self.policy_version,
        }
        if self.bindings_version is not None:
            out["bindings_version"] = self.bindings_version
        return out
