"""The identity tables: the resolvers of `pdp.identity` end to end on the SQL repositories.

Every test runs on SQLite and on the real PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

import pdp.store.identity as identity
from pdp.identity.apikeys import ApiKeyResolver, ApiKeys, KeyHasher
from pdp.identity.jwt import JwtResolver
from pdp.identity.result import AuthnFailure, Cause, Identity
from pdp.identity.sessions import SessionResolver, Sessions
from pdp.store.errors import InvalidInput, StoreUnavailable
from pdp.store.identity import SqlApiKeys, SqlSessions, SqlTokenRevocations
from pdp.store.sql import SqlStore
from tests.identity.keys import ISSUER, NOW, T, token
from tests.identity.test_jwt import resolver as jwt_resolver

PEPPER = b"p" * 32
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def cause(result: object) -> Cause:
    assert isinstance(result, AuthnFailure), result
    return result.cause


# ---------------------------------------------------------------------- API keys


def keys(store: SqlStore) -> tuple[ApiKeys, ApiKeyResolver, SqlApiKeys]:
    repo = SqlApiKeys(store, created_by="ops")
    hasher = KeyHasher(PEPPER)
    return ApiKeys(repo, hasher), ApiKeyResolver(repo, hasher), repo


def test_an_api_key_round_trips_and_resolves(store: SqlStore) -> None:
    mgmt, resolver, repo = keys(store)
    issued = mgmt.create(
        "service",
        "indexer",
        now=NOW,
        name="nightly",
        scopes=["documents:read", "documents:write"],
        expires_at=NOW + 24 * HOUR,
    )
    stored = repo.get(issued.record.prefix)
    assert stored == issued.record  # every field, the digest included
    assert issued.key.split("_")[2] not in repr(stored)  # the secret is not stored

    ident = resolver.resolve(issued.key, NOW + MINUTE)
    assert isinstance(ident, Identity)
    assert ident.subject.key == "service:indexer"
    assert ident.scopes == ("documents:read", "documents:write")
    assert ident.credential_id == issued.record.prefix
    assert repo.get(issued.record.prefix).last_used_at == NOW + MINUTE  # type: ignore[union-attr]

    (entry,) = repo.entries("service:indexer")
    assert entry.created_by == "ops" and entry.scheme == "hmac-sha256"
    assert repo.records("user:nobody") == []
    with pytest.raises(ValueError, match="exists"):
        repo.add(issued.record)
    assert store.revision() == 0  # identity writes never move the bindings revision


def test_api_key_failures_have_their_causes(store: SqlStore) -> None:
    mgmt, resolver, repo = keys(store)
    a = mgmt.create("service", "a", now=NOW, expires_at=NOW + HOUR)
    b = mgmt.create("service", "b", now=NOW)
    prefix, secret = a.key.split("_")[1:]

    assert cause(resolver.resolve(f"pdp_{prefix}_{'x' * len(secret)}", NOW)) is Cause.KEY_MISMATCH
    assert cause(resolver.resolve(f"pdp_{'z' * 12}_{secret}", NOW)) is Cause.KEY_UNKNOWN
    assert cause(resolver.resolve("pdp_nope", NOW)) is Cause.KEY_MALFORMED
    assert cause(resolver.resolve(a.key, NOW + HOUR)) is Cause.KEY_EXPIRED

    mgmt.revoke(b.record.prefix, now=NOW + MINUTE)
    mgmt.revoke(b.record.prefix, now=NOW + HOUR)  # an earlier revocation stands
    assert repo.get(b.record.prefix).revoked_at == NOW + MINUTE  # type: ignore[union-attr]
    assert isinstance(resolver.resolve(b.key, NOW), Identity)  # before the revocation
    assert cause(resolver.resolve(b.key, NOW + 2 * MINUTE)) is Cause.KEY_REVOKED
    assert repo.revoke("z" * 12, NOW) is False


def test_rotation_keeps_the_old_key_for_the_overlap_only(store: SqlStore) -> None:
    mgmt, resolver, repo = keys(store)
    old = mgmt.create("service", "ci", now=NOW, scopes=["deploy"], expires_at=NOW + 30 * HOUR)
    new = mgmt.rotate(old.record.prefix, now=NOW + HOUR, overlap=HOUR)
    assert new.record.scopes == ("deploy",)
    assert new.record.expires_at == NOW + 31 * HOUR  # the old lifetime, from now
    stored = repo.get(old.record.prefix)
    assert stored is not None and stored.rotated_to == new.record.prefix
    assert stored.expires_at == NOW + 2 * HOUR

    assert isinstance(resolver.resolve(old.key, NOW + 90 * MINUTE), Identity)
    assert cause(resolver.resolve(old.key, NOW + 2 * HOUR)) is Cause.KEY_ROTATED
    assert isinstance(resolver.resolve(new.key, NOW + 2 * HOUR), Identity)
    assert [r.prefix for r in repo.records("service:ci")] == [
        old.record.prefix,
        new.record.prefix,
    ]


# ---------------------------------------------------------------------- sessions


def sessions(store: SqlStore) -> tuple[Sessions, SessionResolver, SqlSessions]:
    repo = SqlSessions(store)
    return Sessions(repo), SessionResolver(repo, renew_after=MINUTE), repo


def test_a_session_round_trips_renews_and_idles(store: SqlStore) -> None:
    mgmt, resolver, repo = sessions(store)
    sid, record = mgmt.create(
        "user",
        "alice",
        now=NOW,
        lifetime=8 * HOUR,
        idle_timeout=30 * MINUTE,
        properties={"tenant": "acme", "mfa": True},
    )
    assert repo.get(record.id_hash) == record
    assert repo.get("0" * 64) is None

    ident = resolver.resolve(sid, NOW + 20 * MINUTE)  # renews: idle deadline moves
    assert isinstance(ident, Identity) and ident.subject.key == "user:alice"
    assert dict(ident.subject.properties) == {"tenant": "acme", "mfa": True}
    assert repo.get(record.id_hash).last_seen_at == NOW + 20 * MINUTE  # type: ignore[union-attr]
    assert isinstance(resolver.resolve(sid, NOW + 45 * MINUTE), Identity)  # 25 min idle
    assert cause(resolver.resolve(sid, NOW + 80 * MINUTE)) is Cause.SESSION_IDLE
    assert cause(resolver.resolve("A" * 43, NOW)) is Cause.SESSION_UNKNOWN
    assert cause(resolver.resolve("bad id!", NOW)) is Cause.SESSION_MALFORMED

    sid2, _ = mgmt.create("user", "alice", now=NOW, lifetime=HOUR, idle_timeout=2 * HOUR)
    assert cause(resolver.resolve(sid2, NOW + HOUR)) is Cause.SESSION_EXPIRED
    assert store.revision() == 0


def test_sessions_are_revoked_by_handle_and_by_subject(store: SqlStore) -> None:
    mgmt, resolver, repo = sessions(store)
    s1, r1 = mgmt.create("user", "alice", now=NOW)
    s2, r2 = mgmt.create("user", "alice", now=NOW + MINUTE)
    s3, r3 = mgmt.create("user", "bob", now=NOW)

    assert [r.id_hash for r in repo.find(r1.handle)] == [r1.id_hash]
    assert [r.id_hash for r in repo.find(r1.id_hash)] == [r1.id_hash]
    assert repo.find("not-hex") == []
    mgmt.revoke(r1.handle.upper(), now=NOW + 2 * MINUTE)
    assert cause(resolver.resolve(s1, NOW + 3 * MINUTE)) is Cause.SESSION_REVOKED
    assert isinstance(resolver.resolve(s2, NOW + 3 * MINUTE), Identity)

    assert mgmt.revoke_subject("user:alice", now=NOW + 4 * MINUTE) == 1  # s1 already was
    assert cause(resolver.resolve(s2, NOW + 5 * MINUTE)) is Cause.SESSION_REVOKED
    assert isinstance(resolver.resolve(s3, NOW + 5 * MINUTE), Identity)
    assert [r.id_hash for r in mgmt.list("user:alice")] == [r1.id_hash, r2.id_hash]
    assert repo.revoke("f" * 64, NOW) is False

    # Purge: ended (revoked or expired) before the given time.
    assert repo.purge(NOW + 3 * MINUTE) == 1  # s1, revoked at +2 min
    assert repo.purge(NOW + 13 * HOUR) == 2  # s2 revoked; s3 expired at +12 h
    assert repo.records() == []


# ---------------------------------------------------------------------- token revocation


def test_revoked_jtis_and_subject_cutoffs_refuse_tokens(store: SqlStore) -> None:
    revocations = SqlTokenRevocations(store)
    clock = [0.0]
    check = revocations.checker(
        ISSUER, refresh_interval=5, max_staleness=30, background=False, clock=lambda: clock[0]
    )
    r, _, _ = jwt_resolver(revocations=check)
    assert isinstance(r.resolve(token(), NOW), Identity)  # first check reads the list

    _, new = revocations.revoke_token("tok-1", issuer=ISSUER, now=NOW, created_by="ops")
    assert new and not revocations.revoke_token("tok-1", issuer=ISSUER)[1]
    assert isinstance(r.resolve(token(), NOW), Identity)  # cached: not seen yet
    clock[0] = 5.0
    assert cause(r.resolve(token(), NOW)) is Cause.TOKEN_REVOKED  # within refresh_interval
    assert isinstance(r.resolve(token(jti="tok-2"), NOW), Identity)

    # Another issuer's jti does not count; one revoked for any issuer ("") does.
    revocations.revoke_token("tok-2", issuer="https://other.example.com")
    revocations.revoke_token("tok-3")
    check.refresh()
    assert isinstance(r.resolve(token(jti="tok-2"), NOW), Identity)
    assert cause(r.resolve(token(jti="tok-3"), NOW)) is Cause.TOKEN_REVOKED

    # Every token of bob issued before NOW.
    cut, moved = revocations.revoke_subject("user:bob", before=NOW, now=NOW, created_by="ops")
    assert moved and cut.not_before == NOW
    assert not revocations.revoke_subject("user:bob", before=NOW - HOUR, now=NOW)[1]
    check.refresh()
    assert cause(r.resolve(token(sub="bob", jti="b1"), NOW)) is Cause.TOKEN_REVOKED  # iat T-60
    assert isinstance(r.resolve(token(sub="bob", jti="b2", iat=T + 1), NOW), Identity)
    assert cause(r.resolve(token(sub="bob", jti="b3", iat=None), NOW)) is Cause.TOKEN_REVOKED
    assert isinstance(r.resolve(token(sub="carol", jti="c1"), NOW), Identity)

    assert [(t.issuer, t.jti) for t in revocations.tokens()] == [
        (ISSUER, "tok-1"),
        ("https://other.example.com", "tok-2"),
        ("", "tok-3"),
    ]
    assert [(c.subject, c.not_before, c.created_by) for c in revocations.cutoffs()] == [
        ("user:bob", NOW, "ops")
    ]
    with pytest.raises(InvalidInput, match="future"):
        revocations.revoke_subject("user:bob", before=NOW + HOUR, now=NOW)
    with pytest.raises(InvalidInput, match="printable"):
        revocations.revoke_token("")
    assert store.revision() == 0


def test_the_revocation_list_fails_closed_past_its_staleness_bound(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    revocations = SqlTokenRevocations(store)
    clock = [0.0]
    check = revocations.checker(
        ISSUER, refresh_interval=5, max_staleness=30, background=False, clock=lambda: clock[0]
    )
    r: JwtResolver = jwt_resolver(revocations=check)[0]
    assert isinstance(r.resolve(token(), NOW), Identity)

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("cannot reach the database")

    monkeypatch.setattr(revocations, "snapshot", down)
    clock[0] = 29.0
    assert isinstance(r.resolve(token(), NOW), Identity)  # the last list still serves
    clock[0] = 31.0
    assert cause(r.resolve(token(), NOW)) is Cause.STORE_UNAVAILABLE
    monkeypatch.undo()
    clock[0] = 32.0
    assert isinstance(r.resolve(token(), NOW), Identity)  # back by itself


def test_the_first_check_waits_for_the_list_and_refuses_without_it(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    revocations = SqlTokenRevocations(store)
    r = jwt_resolver(revocations=revocations.checker(ISSUER))[0]

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("cannot reach the database")

    monkeypatch.setattr(revocations, "snapshot", down)
    assert cause(r.resolve(token(), NOW)) is Cause.STORE_UNAVAILABLE


def test_background_refresh_picks_up_revocations(store: SqlStore) -> None:
    from tests.store.support import wait_for

    revocations = SqlTokenRevocations(store)
    check = revocations.checker(ISSUER, refresh_interval=0.05, max_staleness=10)
    assert not check("tok-9", "user:alice", NOW)
    revocations.revoke_token("tok-9", issuer=ISSUER)
    wait_for(lambda: check("tok-9", "user:alice", NOW), timeout=5)


def test_purge_drops_revocations_of_expired_tokens_only(store: SqlStore) -> None:
    revocations = SqlTokenRevocations(store)
    revocations.revoke_token("old", expires_at=NOW - HOUR, now=NOW - 2 * HOUR)
    revocations.revoke_token("fresh", expires_at=NOW + HOUR, now=NOW)
    revocations.revoke_token("forever", now=NOW)
    # The list a check reads leaves the expired token out already.
    assert revocations.snapshot(ISSUER, NOW).jtis == {"fresh", "forever"}
    assert revocations.purge(NOW) == 1
    assert sorted(t.jti for t in revocations.tokens()) == ["forever", "fresh"]
    assert revocations.purge(NOW + 2 * HOUR) == 1
    assert [t.jti for t in revocations.tokens()] == ["forever"]


# ---------------------------------------------------------------------- migration


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_0001_store_is_upgraded_with_its_data_and_can_go_back(
    backend: str, tmp_path: Path
) -> None:
    from pdp.store import migrate
    from pdp.store.errors import SchemaNotReady
    from tests.store.support import PgSchema

    schema = PgSchema() if backend == "postgresql" else None
    url = schema.url() if schema else f"sqlite:///{tmp_path / 'old.db'}"
    try:
        with SqlStore(url, check_schema=False) as store:
            store.run(lambda e: migrate.upgrade(e, "0001"))
            store.grant("user:alice", "viewer")
        with pytest.raises(SchemaNotReady, match="is at schema 0001, this pdp needs 0002"):
            SqlStore(url)
        with SqlStore(url, check_schema=False) as store:
            assert store.run(migrate.upgrade) == ("0001", "0002")
        with SqlStore(url) as store:
            assert store.roles_for("user:alice", ["global"], NOW) == {"viewer"}
            SqlTokenRevocations(store).revoke_token("t")
            assert store.revision() == 1  # the grant only
            store.run(lambda e: _downgrade(e, "0001"))
            assert store.run(migrate.current) == "0001"
    finally:
        if schema:
            schema.drop()


def _downgrade(engine: Engine, target: str) -> None:
    from alembic import command

    from pdp.store.migrate import _config

    with engine.begin() as conn:
        command.downgrade(_config(conn), target)


def test_reads_fail_at_once_for_a_moment_after_the_database_was_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A credential check must not wait out the connect timeout on every call while the
    # database is away: after one failure, reads fail fast, then try again.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    store = SqlStore(f"postgresql://pdp@127.0.0.1:{port}/test", check_schema=False)
    tries = 0
    real_run = store.run

    def counted(fn: object) -> object:
        nonlocal tries
        tries += 1
        return real_run(fn)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "run", counted)
    monkeypatch.setattr(identity, "RETRY_AFTER", 0.2)
    keys = SqlApiKeys(store)
    try:
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="cannot reach the database"):
                keys.get("abcdefgh1234")
        assert tries == 1  # the second and third did not try to connect
        time.sleep(0.25)
        with pytest.raises(StoreUnavailable):
            keys.get("abcdefgh1234")
        assert tries == 2  # after the pause, a real attempt again
    finally:
        store.close()
