"""Sessions: lifetime, idle timeout with rolling renewal, revocation, no timing oracle."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from pdp.identity import sessions
from pdp.identity.result import AuthnFailure, Cause, CredentialKind, Identity
from pdp.identity.sessions import (
    MemorySessions,
    SessionError,
    SessionRecord,
    SessionResolver,
    Sessions,
    new_session_id,
    session_hash,
)
from tests.identity.keys import NOW


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def setup() -> tuple[Sessions, SessionResolver, MemorySessions]:
    repo = MemorySessions()
    return Sessions(repo), SessionResolver(repo, renew_after=minutes(1)), repo


def login(s: Sessions, who: str = "alice", **kw: timedelta) -> tuple[str, SessionRecord]:
    return s.create(
        "user",
        who,
        now=NOW,
        lifetime=kw.get("lifetime", timedelta(hours=8)),
        idle_timeout=kw.get("idle", minutes(30)),
        properties={"tenant": "acme"},
    )


def cause(result: object) -> Cause:
    assert isinstance(result, AuthnFailure), result
    return result.cause


def test_a_session_is_stored_only_as_a_hash() -> None:
    s, _, repo = setup()
    sid, record = login(s)
    assert record.id_hash == session_hash(sid) and sid not in repr(record)
    assert repo.get(session_hash(sid)) == record
    assert len(sid) == 43 and new_session_id() != sid


def test_a_live_session_authenticates() -> None:
    s, resolver, _ = setup()
    sid, record = login(s)
    ident = resolver.resolve(sid, NOW + minutes(5))
    assert isinstance(ident, Identity)
    assert ident.subject.key == "user:alice"
    assert dict(ident.subject.properties) == {"tenant": "acme"}
    assert ident.kind is CredentialKind.SESSION
    assert ident.credential_id == record.handle
    assert ident.expires_at == NOW + minutes(35)  # renewed: now + idle timeout


def test_use_renews_the_idle_deadline_at_most_once_per_renew_after() -> None:
    s, resolver, repo = setup()
    sid, _ = login(s)
    t = NOW
    for _ in range(10):  # used every 20 minutes for over 3 hours: never idle
        t += minutes(20)
        assert isinstance(resolver.resolve(sid, t), Identity)
    assert repo.get(session_hash(sid)).last_seen_at == t  # type: ignore[union-attr]
    resolver.resolve(sid, t + timedelta(seconds=30))
    assert repo.get(session_hash(sid)).last_seen_at == t  # type: ignore[union-attr]


def test_a_short_idle_timeout_is_renewed_before_it_runs_out() -> None:
    # renew_after is a minute; an idle timeout of 30 s must still roll for active users.
    s, resolver, repo = setup()
    sid, _ = login(s, idle=timedelta(seconds=30))
    t = NOW
    for _ in range(6):  # used every 20 seconds: never idle
        t += timedelta(seconds=20)
        assert isinstance(resolver.resolve(sid, t), Identity), t - NOW
    assert repo.get(session_hash(sid)).last_seen_at == t  # type: ignore[union-attr]
    assert cause(resolver.resolve(sid, t + timedelta(seconds=30))) is Cause.SESSION_IDLE


def test_an_idle_session_fails_as_idle() -> None:
    s, resolver, _ = setup()
    sid, _ = login(s)
    assert cause(resolver.resolve(sid, NOW + minutes(30))) is Cause.SESSION_IDLE


def test_renewal_never_outlives_the_absolute_expiry() -> None:
    s, resolver, _ = setup()
    sid, _ = login(s, lifetime=minutes(45))
    ident = resolver.resolve(sid, NOW + minutes(25))
    assert isinstance(ident, Identity) and ident.expires_at == NOW + minutes(45)
    assert isinstance(resolver.resolve(sid, NOW + minutes(44)), Identity)
    assert cause(resolver.resolve(sid, NOW + minutes(45))) is Cause.SESSION_EXPIRED


def test_revoked_unknown_and_malformed_sessions() -> None:
    s, resolver, _ = setup()
    sid, record = login(s)
    s.revoke(record.handle, now=NOW + minutes(1))
    assert isinstance(resolver.resolve(sid, NOW), Identity)  # revoked from a minute on
    assert cause(resolver.resolve(sid, NOW + minutes(2))) is Cause.SESSION_REVOKED
    assert cause(resolver.resolve(new_session_id(), NOW)) is Cause.SESSION_UNKNOWN
    for bad in ("", "short", "x" * 200, "ünïcode" * 8, "a b" * 20):
        assert cause(resolver.resolve(bad, NOW)) is Cause.SESSION_MALFORMED


def test_logging_out_everywhere_revokes_every_session_of_the_subject() -> None:
    s, resolver, _ = setup()
    a1, _ = login(s)
    a2, _ = login(s)
    b, _ = login(s, "bob")
    assert s.revoke_subject("user:alice", now=NOW) == 2
    assert cause(resolver.resolve(a1, NOW)) is Cause.SESSION_REVOKED
    assert cause(resolver.resolve(a2, NOW)) is Cause.SESSION_REVOKED
    assert isinstance(resolver.resolve(b, NOW), Identity)


def test_revocation_by_handle_needs_an_unambiguous_handle() -> None:
    s, _, _ = setup()
    _, record = login(s)
    with pytest.raises(SessionError, match="not a session handle"):
        s.revoke("abc", now=NOW)
    with pytest.raises(SessionError, match="no session"):
        s.revoke("ffffffffffffffff" if not record.handle.startswith("ff") else "0" * 16, now=NOW)
    s.revoke(record.handle.upper(), now=NOW)
    assert s.list()[0].state(NOW) == "revoked"


def test_bad_sessions_cannot_be_created() -> None:
    s, _, _ = setup()
    with pytest.raises(SessionError):
        s.create("user", "", now=NOW)
    with pytest.raises(SessionError):
        s.create("user", "alice", now=NOW, idle_timeout=timedelta(0))


def test_a_failing_store_is_a_failure_and_a_failing_renewal_is_not() -> None:
    class Down(MemorySessions):
        def get(self, id_hash: str) -> SessionRecord | None:
            raise ConnectionError("down")

    assert cause(SessionResolver(Down()).resolve(new_session_id(), NOW)) is (
        Cause.STORE_UNAVAILABLE
    )

    class ReadOnly(MemorySessions):
        def touch(self, id_hash: str, at: datetime) -> None:
            raise ConnectionError("read-only")

    repo = ReadOnly()
    sid, _ = Sessions(repo).create("user", "alice", now=NOW)
    ident = SessionResolver(repo).resolve(sid, NOW + minutes(10))
    assert isinstance(ident, Identity)
    assert ident.expires_at == NOW + minutes(30)  # not renewed: the old idle deadline


def test_unknown_malformed_and_valid_sessions_cost_the_same_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instead of timing: count hashes and constant-time comparisons per outcome."""
    hashed: list[int] = []
    compared: list[tuple[int, int]] = []
    real_hash, real_compare = sessions.session_hash, sessions.compare_digest

    def counting_hash(sid: str) -> str:
        hashed.append(1)
        return real_hash(sid)

    def counting_compare(a: str, b: str) -> bool:
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(sessions, "session_hash", counting_hash)
    monkeypatch.setattr(sessions, "compare_digest", counting_compare)
    s, resolver, _ = setup()
    sid, _ = login(s)
    work = {}
    for label, value in {
        "valid": sid,
        "unknown": new_session_id(),
        "malformed": "%%%",
    }.items():
        hashed[:], compared[:] = [], []
        resolver.resolve(value, NOW)
        work[label] = (len(hashed), list(compared))
    assert work["valid"] == work["unknown"] == work["malformed"] == (1, [(64, 64)])
