"""The cached role source: hits, invalidation on a new revision, expiry, and outages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.evaluation import enrich, evaluate
from pdp.lang.load import load_texts
from pdp.store.cache import CachedRoleSource
from pdp.store.errors import StoreUnavailable
from pdp.store.sql import Lookup, SqlStore
from tests.store.support import POLICIES, PgSchema, TcpProxy, wait_for

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WHERE = ("global", "tenant/acme", "document/42")


@pytest.fixture
def other(store_url: str) -> Iterator[SqlStore]:
    """A second connection to the same database: another replica, or an admin's CLI."""
    s = SqlStore(store_url)
    yield s
    s.close()


@pytest.fixture
def policy() -> CompiledPolicySet:
    return compile_policy_set(load_texts(POLICIES).unwrap())


def request(who: str, action: str, now: datetime = NOW) -> Request:
    return Request(
        Subject("user", who),
        Action(action),
        Resource("document", "42", {"tenant": "acme", "owner": "nobody"}),
        now=now,
    )


def test_hits_are_served_from_memory(store: SqlStore) -> None:
    store.grant("user:alice", "editor", "tenant/acme")
    cache = CachedRoleSource(store)
    assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
    assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.bindings_version == "1"


def test_a_new_revision_drops_the_cache(store: SqlStore, other: SqlStore) -> None:
    store.grant("user:alice", "editor", "tenant/acme")
    store.set_attributes("user:alice", {"tenant": "acme"})
    cache = CachedRoleSource(store)
    assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
    assert dict(cache.attributes("user:alice")) == {"tenant": "acme"}
    other.revoke("user:alice", "editor", "tenant/acme")
    other.set_attributes("user:alice", {"tenant": "globex"})
    # Until the change is noticed the cached answer stands ...
    assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
    cache.poll()  # ... what the watcher does every interval (or on NOTIFY)
    assert cache.roles_for("user:alice", WHERE, NOW) == frozenset()
    assert dict(cache.attributes("user:alice")) == {"tenant": "globex"}
    assert cache.bindings_version == "4"


def test_a_miss_that_reads_a_newer_revision_drops_the_rest(
    store: SqlStore, other: SqlStore
) -> None:
    store.grant("user:alice", "editor", "tenant/acme")
    cache = CachedRoleSource(store)
    assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
    other.revoke("user:alice", "editor", "tenant/acme")
    cache.roles_for("user:bob", WHERE, NOW)  # a miss: sees revision 2
    assert cache.roles_for("user:alice", WHERE, NOW) == frozenset()


def test_an_answer_read_before_a_change_is_not_kept(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow query that read an older snapshot must not refill the cache with it."""
    store.grant("user:alice", "editor")
    cache = CachedRoleSource(store)
    cache.poll()  # knows revision 1
    store.grant("user:bob", "viewer")
    cache.poll()  # knows revision 2
    monkeypatch.setattr(store, "lookup", lambda *a: Lookup(1, (("editor", None),)))
    assert cache.roles_for("user:alice", ["global"], NOW) == {"editor"}
    monkeypatch.undo()
    misses = cache.misses
    cache.roles_for("user:alice", ["global"], NOW)
    assert cache.misses == misses + 1


def test_expiry_is_applied_to_cached_entries(store: SqlStore) -> None:
    store.grant("user:a", "editor", expires=NOW + timedelta(minutes=5), now=NOW)
    store.grant("user:a", "viewer")
    cache = CachedRoleSource(store)
    assert cache.roles_for("user:a", ["global"], NOW) == {"editor", "viewer"}
    later = NOW + timedelta(minutes=5)
    assert cache.roles_for("user:a", ["global"], later) == {"viewer"}
    assert cache.misses == 1  # the second answer came from the cache, filtered by time
    # An entry read "as of" NOW is not used for an earlier time: that goes to the database.
    assert cache.roles_for("user:a", ["global"], NOW - timedelta(days=1)) == {"editor", "viewer"}
    assert cache.misses == 2


def test_the_watcher_sees_changes_by_itself(backend: str, store: SqlStore, other: SqlStore) -> None:
    store.grant("user:alice", "editor", "tenant/acme")
    with CachedRoleSource(store, poll_interval=0.05) as cache:
        assert cache.roles_for("user:alice", WHERE, NOW) == {"editor"}
        other.revoke("user:alice", "editor", "tenant/acme")
        wait_for(lambda: cache.roles_for("user:alice", WHERE, NOW) == frozenset(), timeout=2)
        assert cache.status().state == "fresh"
        assert cache.listen is (backend == "postgresql")


def test_decisions_carry_the_bindings_version(store: SqlStore, policy: CompiledPolicySet) -> None:
    store.grant("user:alice", "editor", "tenant/acme")
    store.grant("user:bob", "viewer", "tenant/acme")
    cache = CachedRoleSource(store)
    [d] = evaluate(policy, [request("alice", "update")], cache, now=NOW)
    assert d.allowed and d.bindings_version == "2"
    assert d.to_json()["bindings_version"] == "2"


def test_stored_attributes_win_over_the_request(store: SqlStore) -> None:
    """A request may add properties but never override a stored (trusted) one."""
    store.set_attributes("user:mallory", {"tenant": "globex", "clearance": 1})
    claims = Request(
        Subject("user", "mallory", {"tenant": "acme", "clearance": 9, "device": "laptop"}),
        Action("read"),
        Resource("document", "42", {"tenant": "acme"}),
        now=NOW,
    )
    for source in (store, CachedRoleSource(store)):
        enriched = enrich(claims.subject, source)
        assert dict(enriched.properties) == {
            "tenant": "globex",
            "clearance": 1,
            "device": "laptop",
        }


@pytest.fixture
def outage(pg_schema: PgSchema) -> Iterator[tuple[SqlStore, SqlStore, TcpProxy]]:
    """(direct store, store through a proxy, the proxy) on this run's PostgreSQL schema."""
    pg_schema.reset()
    direct = SqlStore(pg_schema.url())
    proxy = TcpProxy(direct.url_obj.host or "127.0.0.1", direct.url_obj.port or 5432).start()
    via = SqlStore(pg_schema.url(port=proxy.port), connect_timeout=2)
    try:
        yield direct, via, proxy
    finally:
        proxy.stop()
        via.close()
        direct.close()


def test_outage_serve_cached_then_deny_then_recover(
    outage: tuple[SqlStore, SqlStore, TcpProxy], policy: CompiledPolicySet
) -> None:
    """The database goes away for real (the TCP path is cut), then comes back."""
    direct, via, proxy = outage
    direct.grant("user:alice", "editor", "tenant/acme")
    direct.grant("user:bob", "viewer", "tenant/acme")
    with CachedRoleSource(via, poll_interval=0.05, max_staleness=1.0) as cache:
        now = datetime.now(UTC)
        [d] = evaluate(policy, [request("alice", "update", now)], cache)
        assert d.allowed

        proxy.stop()
        wait_for(lambda: cache.status().state == "stale", timeout=5)
        # (1) Within the staleness bound: cached entries still answer ...
        [d] = evaluate(policy, [request("alice", "update", now)], cache)
        assert d.allowed, d
        # ... but what was never cached is denied at once, never allowed.
        [d] = evaluate(policy, [request("bob", "read", now)], cache)
        assert not d.allowed
        assert [x.code for x in d.diagnostics] == ["store_unavailable"]
        assert "cannot reach the database" in d.diagnostics[0].message

        # (2) Past the bound: every lookup is denied with `store_unavailable`.
        wait_for(lambda: cache.status().state == "unavailable", timeout=5)
        [d] = evaluate(policy, [request("alice", "update", now)], cache)
        assert not d.allowed and d.reasons == ()
        assert [x.code for x in d.diagnostics] == ["store_unavailable"]
        assert "staleness bound of 1 s" in d.diagnostics[0].message
        with pytest.raises(StoreUnavailable):
            cache.roles_for("user:alice", WHERE, now)

        # Someone revokes while this PDP is cut off from the database.
        direct.revoke("user:alice", "editor", "tenant/acme")

        # (3) The database comes back: the PDP recovers by itself, with fresh data.
        proxy.start()
        wait_for(lambda: cache.status().state == "fresh", timeout=10)
        [d] = evaluate(policy, [request("alice", "update", now)], cache)
        assert not d.allowed and d.diagnostics == ()
        [d] = evaluate(policy, [request("bob", "read", now)], cache)
        assert d.allowed
        assert d.bindings_version == "3"


def test_a_down_database_at_start_denies(policy: CompiledPolicySet, pg_schema: PgSchema) -> None:
    proxy = TcpProxy("127.0.0.1", 5432).start()
    via = SqlStore(pg_schema.url(port=proxy.port), connect_timeout=2)
    proxy.stop()
    try:
        cache = CachedRoleSource(via, poll_interval=0.05)
        [d] = evaluate(policy, [request("alice", "read")], cache)
        assert not d.allowed
        assert [x.code for x in d.diagnostics] == ["store_unavailable"]
        assert f"127.0.0.1:{proxy.port}" in d.diagnostics[0].message
    finally:
        via.close()


def test_outages_are_logged_when_they_start_and_end_never_per_call(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    cache = CachedRoleSource(store, max_staleness=10, clock=lambda: clock[0])
    cache.poll()
    real_revision = store.revision

    def down() -> int:
        raise StoreUnavailable("cannot reach the database at somewhere: connection refused")

    caplog.set_level(logging.INFO, logger="pdp.store")
    monkeypatch.setattr(store, "revision", down)
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            cache.poll()
        with pytest.raises(StoreUnavailable):
            cache.roles_for("user:x", WHERE, NOW)
    clock[0] += 11  # past the staleness bound
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="staleness bound"):
            cache.roles_for("user:x", WHERE, NOW)
    monkeypatch.setattr(store, "revision", real_revision)
    for _ in range(3):
        cache.poll()
        cache.roles_for("user:x", WHERE, NOW)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "the bindings store is unavailable: cannot reach the database at somewhere: "
            "connection refused; cached lookups are served for up to 10 s after the last "
            "answer, the others are denied",
        ),
        (
            "WARNING",
            "the bindings store has not answered for 11.0 s, past the staleness bound of "
            "10 s: every lookup is denied until it answers",
        ),
        ("INFO", "the bindings store answers again, after 11.0 s unavailable"),
    ]
    assert cache.status().state == "fresh"
