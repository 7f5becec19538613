"""Calls answered on the event loop, and the ones that must wait on I/O moved to the pool.

A role source that needs the database calls `check_may_block()` first (as the SQL
store's cache does on a miss): on the loop that raises `WouldBlock`, and the server
answers the call again on its thread pool. These tests watch which thread answered,
and that a slow lookup holds up only its own call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pdp.audit.sink import MemorySink
from pdp.client import PdpClient
from pdp.server.app import PdpServer
from pdp.server.config import load_config
from pdp.server.state import RoleBackend, Roles
from pdp.store.blocking import WouldBlock, check_may_block, forbid_blocking
from tests.server.support import ALICE, DOC, thread_pool_settings


class CachingSource:
    """Remembers each subject after a first, slow "database" lookup (like the SQL cache)."""

    def __init__(self, slow: float = 0.0) -> None:
        self.slow = slow
        self.cached: set[str] = set()
        self.threads: list[tuple[str, str]] = []  # (subject, thread name) of each lookup

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        if subject not in self.cached:
            check_may_block()
            if subject == "user:slow":
                time.sleep(self.slow)
            self.cached.add(subject)
        self.threads.append((subject, threading.current_thread().name))
        return frozenset({"viewer"})

    def attributes(self, subject: str) -> Mapping[str, Any]:
        return {"tenant": "acme"}


class Backend(RoleBackend):
    description = "caching test backend"

    def __init__(self, source: CachingSource) -> None:
        self.source = source

    def load(self, known_roles: Collection[str]) -> Roles:
        return Roles(self.source, lambda: "rev-1")


@pytest.fixture
def served(policy_dir: Path) -> Any:
    source = CachingSource(slow=1.5)
    sink = MemorySink()
    flags = {"listen": "127.0.0.1:0", "policies": str(policy_dir), "audit.mode": "durable"}
    cfg = load_config(None, environ={}, flags=flags)
    server = PdpServer(cfg, backend=Backend(source), sink=sink)
    port = server.start()
    try:
        yield source, sink, f"127.0.0.1:{port}"
    finally:
        server.stop(1)


def test_a_miss_is_answered_on_the_pool_and_a_hit_on_the_loop(served: Any) -> None:
    source, sink, target = served
    with PdpClient(target, timeout=5) as client:
        first = client.check(ALICE, "read", DOC)
        second = client.check(ALICE, "read", DOC)
    assert first.allowed and second.allowed
    # The miss raised on the loop, then ran (and filled the cache) on a pool thread.
    assert [name.split("_")[0] for _, name in source.threads] == ["pdp-rpc", "pdp-grpc"]
    # Each call is recorded once, though the first one was begun twice.
    recorded = [r.decision_id for r in sink.records]
    assert recorded == [first.decision_id, second.decision_id]


def test_a_slow_lookup_holds_up_only_its_own_call(served: Any) -> None:
    source, _, target = served
    slow_done: list[float] = []

    def slow_call() -> None:
        with PdpClient(target, timeout=10) as c:
            c.check({"type": "user", "id": "slow"}, "read", DOC)
            slow_done.append(time.monotonic())

    with PdpClient(target, timeout=5) as client:
        client.check(ALICE, "read", DOC)  # cached from here on
        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.2)  # the slow call is now sleeping in its lookup, on a pool thread
        began = time.monotonic()
        for _ in range(20):
            assert client.check(ALICE, "read", DOC).allowed
        quick = time.monotonic() - began
        t.join(10)
    assert slow_done, "the slow call did not finish"
    assert quick < 1.0, f"20 cached calls took {quick:.2f} s while one lookup slept 1.5 s"
    assert slow_done[0] > began + quick  # they did not wait for it


def test_check_may_block_raises_only_on_a_marked_thread() -> None:
    check_may_block()  # an ordinary thread may wait
    raised: list[BaseException] = []

    def loop_thread() -> None:
        forbid_blocking()
        try:
            check_may_block()
        except WouldBlock as exc:
            raised.append(exc)

    t = threading.Thread(target=loop_thread)
    t.start()
    t.join()
    assert len(raised) == 1 and isinstance(raised[0], WouldBlock)
    check_may_block()  # still fine here: the mark belongs to that thread alone


def test_with_credentials_to_look_up_every_call_runs_on_the_pool(
    policy_dir: Path, tmp_path: Path
) -> None:
    # Any call may wait on a key, session or JWKS lookup: the server is then the
    # thread-pool one, and even a cached role lookup happens on a pool thread.
    source = CachingSource()
    flags = {
        "listen": "127.0.0.1:0",
        "policies": str(policy_dir),
        "audit.sink": "none",
        **thread_pool_settings(tmp_path),
    }
    server = PdpServer(load_config(None, environ={}, flags=flags), backend=Backend(source))
    port = server.start()
    try:
        with PdpClient(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.check(ALICE, "read", DOC).allowed
            assert client.check(ALICE, "read", DOC).allowed
    finally:
        server.stop(1)
    assert [name.split("_")[0] for _, name in source.threads] == ["pdp-rpc", "pdp-rpc"]
