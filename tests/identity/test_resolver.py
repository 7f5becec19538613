"""The authenticator: which credential counts, and failing closed."""

from __future__ import annotations

from datetime import datetime

import pytest

from pdp.engine.request import Subject
from pdp.identity.resolver import Authenticator
from pdp.identity.result import (
    AuthnFailure,
    AuthnResult,
    Cause,
    Credential,
    CredentialKind,
    Identity,
    subject_problem,
)
from tests.identity.keys import NOW

B, K, S = CredentialKind.BEARER, CredentialKind.API_KEY, CredentialKind.SESSION


class Fake:
    """A resolver that accepts the value `good` and records what it was asked."""

    def __init__(self, kind: CredentialKind, boom: bool = False) -> None:
        self._kind = kind
        self.boom = boom
        self.asked: list[str] = []

    @property
    def kind(self) -> CredentialKind:
        return self._kind

    def resolve(self, credential: str, now: datetime) -> AuthnResult:
        self.asked.append(credential)
        if self.boom:
            raise RuntimeError("bug")
        if credential == "good":
            return Identity(Subject("user", self._kind.value), self._kind)
        return AuthnFailure(Cause.KEY_UNKNOWN, self._kind)


def test_the_first_kind_in_order_wins_and_a_failure_does_not_fall_through() -> None:
    bearer, key = Fake(B), Fake(K)
    a = Authenticator([key, bearer])
    result = a.authenticate([Credential(K, "good"), Credential(B, "bad")], NOW)
    assert isinstance(result, AuthnFailure)  # the bearer is first by default, and it failed
    assert key.asked == []
    a2 = Authenticator([key, bearer], order=[K, B])
    assert isinstance(a2.authenticate([Credential(K, "good"), Credential(B, "bad")], NOW), Identity)


def test_no_credential_and_unconfigured_kinds() -> None:
    a = Authenticator([Fake(K)])
    assert a.kinds == {K}
    result = a.authenticate([Credential(S, "good")], NOW)
    assert isinstance(result, AuthnFailure) and result.cause is Cause.NO_CREDENTIAL


def test_the_same_kind_twice_is_ambiguous() -> None:
    fake = Fake(S)
    result = Authenticator([fake]).authenticate([Credential(S, "good"), Credential(S, "good")], NOW)
    assert isinstance(result, AuthnFailure) and result.cause is Cause.AMBIGUOUS
    assert fake.asked == []


def test_a_resolver_bug_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    result = Authenticator([Fake(B, boom=True)]).authenticate([Credential(B, "good")], NOW)
    assert isinstance(result, AuthnFailure) and result.cause is Cause.INTERNAL_ERROR
    assert "internal error" in caplog.text


def test_configuration_mistakes() -> None:
    with pytest.raises(ValueError, match="two resolvers"):
        Authenticator([Fake(B), Fake(B)])
    with pytest.raises(ValueError, match="not in the order"):
        Authenticator([Fake(B)], order=[K])


@pytest.mark.parametrize(
    ("stype", "sid", "ok"),
    [
        ("user", "alice", True),
        ("service", "spiffe://prod/ns/web/sa/frontend", True),
        ("user", "alice@example.com", True),
        ("user", "", False),
        ("user", "a b", False),
        ("user", "a\tb", False),
        ("user", "x" * 257, False),
        ("", "alice", False),
        ("us er", "alice", False),
        ("user", 42, False),
    ],
)
def test_subject_names(stype: object, sid: object, ok: bool) -> None:
    assert (subject_problem(stype, sid) is None) is ok


def test_audit_sections() -> None:
    ident = Identity(Subject("user", "a"), B, credential_id="jti-1")
    assert ident.audit() == {"result": "ok", "method": "bearer", "credential": "jti-1"}
    fail = AuthnFailure(Cause.TOKEN_EXPIRED, B, "jti-1", "expired 5 s ago")
    assert fail.audit() == {
        "result": "failed",
        "cause": "token_expired",
        "method": "bearer",
        "credential": "jti-1",
        "detail": "expired 5 s ago",
    }
