"""The revoked-token list in memory: fresh, stale, too old, and never a false deny."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from pdp.identity.result import AuthnFailure, Cause, Identity
from pdp.identity.revocation import RevocationCache, RevocationUnavailable
from tests.identity.keys import NOW, token
from tests.identity.test_jwt import resolver


class Revoked:
    """One read of the list: the revoked jtis."""

    def __init__(self, *jtis: str) -> None:
        self.jtis = frozenset(jtis)

    def is_revoked(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool:
        return jti in self.jtis


class Store:
    """The list's source: what it holds, how long a read takes, whether it is down."""

    def __init__(self, *jtis: str) -> None:
        self.jtis = list(jtis)
        self.reads = 0
        self.delay = 0.0
        self.down: Exception | None = None
        self.gate: threading.Event | None = None  # set: a read waits until it is set

    def __call__(self) -> Revoked:
        self.reads += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.delay)
        if self.down is not None:
            raise self.down
        return Revoked(*self.jtis)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def settle(c: RevocationCache) -> None:
    """Until no read is under way."""
    deadline = time.monotonic() + 5
    while c._reading is not None:
        assert time.monotonic() < deadline, "a read never ended"
        time.sleep(0.01)


def cache(store: Store, clock: Clock, **kw: float) -> RevocationCache:
    """Re-reads on real background threads, as in the server."""
    return RevocationCache(
        store,
        refresh_interval=kw.get("refresh_interval", 5),
        max_staleness=kw.get("max_staleness", 60),
        wait=kw.get("wait", 2),
        clock=clock,
    )


def test_a_fresh_list_answers_from_memory() -> None:
    store, clock = Store("gone"), Clock()
    c = cache(store, clock)
    assert c("gone", "user:alice", None) and not c("tok-1", "user:alice", None)
    clock.t = 4.9
    for _ in range(10):
        assert not c("tok-1", "user:alice", None)
    assert store.reads == 1


def test_a_fresh_list_is_answered_without_taking_the_lock() -> None:
    c = cache(Store(), Clock())
    c("tok-1", "user:alice", None)
    answered = threading.Event()

    def ask() -> None:
        c("tok-1", "user:alice", None)
        answered.set()

    with c._lock:  # held elsewhere: the common path must not care
        threading.Thread(target=ask, daemon=True).start()
        assert answered.wait(5)


def test_after_a_quiet_spell_a_healthy_store_never_causes_a_deny() -> None:
    """Regression: the first token after more than `max_staleness` without bearer
    traffic was refused (`store_unavailable`) while the re-read, started in the
    background, had not finished; the database was fine."""
    store, clock = Store(), Clock()
    r = resolver(revocations=cache(store, clock))[0]
    assert isinstance(r.resolve(token(), NOW), Identity)
    store.delay = 0.05  # a real query takes a moment
    store.jtis = ["tok-2"]
    clock.t = 61.0  # no bearer traffic for a minute
    assert isinstance(r.resolve(token(), NOW), Identity)
    # ... and the decision is taken on the list just read, not on the old one.
    result = r.resolve(token(jti="tok-2"), NOW)
    assert isinstance(result, AuthnFailure) and result.cause is Cause.TOKEN_REVOKED
    assert store.reads == 2


def test_a_stale_list_answers_while_it_is_read_again_in_the_background() -> None:
    store, clock = Store(), Clock()
    c = cache(store, clock)
    c("tok-1", "user:alice", None)
    store.gate = threading.Event()  # the database is slow
    store.jtis = ["tok-1"]
    clock.t = 30.0
    started = time.monotonic()
    for _ in range(20):
        assert not c("tok-1", "user:alice", None)  # the copy in hand, at once
    assert time.monotonic() - started < 1
    store.gate.set()
    deadline = time.monotonic() + 5
    while not c("tok-1", "user:alice", None):
        assert time.monotonic() < deadline, "the background read never landed"
        time.sleep(0.01)
    assert store.reads == 2  # one re-read for all those checks


def test_a_too_old_list_refuses_only_when_the_read_fails() -> None:
    store, clock = Store(), Clock()
    c = cache(store, clock)
    c("tok-1", "user:alice", None)
    store.down = ConnectionError("cannot reach the database")
    clock.t = 30.0
    assert not c("tok-1", "user:alice", None)  # within max_staleness: still used
    settle(c)  # that re-read fails
    clock.t = 61.0
    with pytest.raises(RevocationUnavailable, match="cannot reach the database"):
        c("tok-1", "user:alice", None)
    store.down = None
    clock.t = 62.0
    assert not c("tok-1", "user:alice", None)  # back by itself


def test_the_first_check_waits_for_the_list_and_refuses_without_it() -> None:
    store, clock = Store(), Clock()
    store.down = ConnectionError("down")
    c = cache(store, clock)
    with pytest.raises(RevocationUnavailable, match="down"):
        c("tok-1", "user:alice", None)
    store.down = None
    assert not c("tok-1", "user:alice", None)


def test_waiting_for_a_hung_read_is_bounded_and_not_repeated() -> None:
    store, clock = Store(), Clock()
    c = cache(store, clock, wait=0.2)
    c("tok-1", "user:alice", None)
    store.gate = threading.Event()  # the database hangs
    clock.t = 61.0
    started = time.monotonic()
    with pytest.raises(RevocationUnavailable, match="not read within 0.2 s"):
        c("tok-1", "user:alice", None)
    assert 0.15 < time.monotonic() - started < 2
    # Past the read's own deadline, nobody waits for it any more.
    clock.t = 61.5
    started = time.monotonic()
    with pytest.raises(RevocationUnavailable):
        c("tok-1", "user:alice", None)
    assert time.monotonic() - started < 0.1
    assert store.reads == 2  # joined, not repeated
    store.gate.set()
    settle(c)
    clock.t = 62.0
    assert not c("tok-1", "user:alice", None)  # read (at t=61): young enough


def test_concurrent_checks_on_a_too_old_list_share_one_read() -> None:
    store, clock = Store(), Clock()
    c = cache(store, clock)
    c("tok-1", "user:alice", None)
    store.delay = 0.1
    clock.t = 61.0
    barrier = threading.Barrier(8)
    answers: list[bool] = []

    def ask() -> None:
        barrier.wait()
        answers.append(c("tok-1", "user:alice", None))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == [False] * 8
    assert store.reads == 2


@pytest.mark.parametrize(
    "kw",
    [
        {"refresh_interval": 0},
        {"refresh_interval": 10, "max_staleness": 5},
        {"wait": -1},
    ],
)
def test_settings_are_checked(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RevocationCache(Store(), **kw)
