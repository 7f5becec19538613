"""Small builders shared by the tests: load policy text, compile it, build requests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.decide import decide
from pdp.engine.decision import Decision
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.lang.errors import render_all
from pdp.lang.load import LoadResult, load_texts

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday


def load(text: str | bytes, name: str = "test.pdp") -> LoadResult:
    """Load one policy file given as text."""
    return load_texts({name: text})


def load_files(files: Mapping[str, str | bytes]) -> LoadResult:
    return load_texts(files)


def codes(result: LoadResult) -> list[str]:
    return [p.code for p in result.problems]


def compile_text(text: str, name: str = "test.pdp") -> CompiledPolicySet:
    """Load and compile policy text that must have no errors (warnings are fine)."""
    return compile_files({name: text})


def compile_files(files: Mapping[str, str | bytes]) -> CompiledPolicySet:
    result = load_texts(files)
    assert result.policy_set is not None, render_all(result.errors)
    return compile_policy_set(result.policy_set)


def request(
    action: str = "read",
    *,
    resource_type: str = "document",
    resource_id: str = "1",
    resource: Mapping[str, Any] | None = None,
    ancestors: tuple[str, ...] = (),
    subject_type: str = "user",
    subject_id: str = "alice",
    subject: Mapping[str, Any] | None = None,
    action_props: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    now: datetime | None = NOW,
) -> Request:
    """A request; `resource`, `subject` and `action_props` are the properties."""
    return Request(
        Subject(subject_type, subject_id, dict(subject or {})),
        Action(action, dict(action_props or {})),
        Resource(resource_type, resource_id, dict(resource or {}), ancestors),
        dict(context or {}),
        now,
    )


def check(
    policy: CompiledPolicySet, req: Request, roles: frozenset[str] | set[str] = frozenset()
) -> Decision:
    return decide(policy, req, frozenset(roles))


def allowed(
    policy: CompiledPolicySet, req: Request, roles: frozenset[str] | set[str] = frozenset()
) -> bool:
    return decide(policy, req, frozenset(roles)).allowed
