"""Two PDP processes sharing one database: a revoke in one is seen by the other in time.

The second process is a real one (`tests/store/peer.py`), with its own cache and
watcher, answering from its cache until the change reaches it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdp.store.sql import SqlStore

ROOT = Path(__file__).resolve().parents[2]


def run_peer_and_revoke(url: str, *extra: str) -> tuple[float, dict[str, float]]:
    """Start the peer, wait until it allows, revoke here; (delay in s, peer's counters)."""
    store = SqlStore(url)
    store.grant("user:alice", "editor", "tenant/acme")
    peer = subprocess.Popen(
        [sys.executable, "-m", "tests.store.peer", url, "alice", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        line = peer.stdout.readline()
        assert line.strip() == "ready", (line, peer.stderr.read() if peer.stderr else "")
        time.sleep(0.3)  # the peer is now answering from its cache
        revoked_at = time.time()
        store.revoke("user:alice", "editor", "tenant/acme")
        out, err = peer.communicate(timeout=20)
        assert peer.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        store.close()
    return report["seen"] - revoked_at, report


def test_a_revoke_reaches_another_process_within_a_second(store_url: str, backend: str) -> None:
    """PostgreSQL: LISTEN/NOTIFY, immediate. SQLite: polling every second."""
    delay, report = run_peer_and_revoke(store_url)
    assert report["hits"] > 10, report  # it really was answering from its cache
    assert 0 <= delay < 1.0 + (0.25 if backend == "sqlite" else 0), delay
    if backend == "postgresql":
        assert delay < 0.5, f"NOTIFY should be near-immediate, took {delay:.3f} s"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_polling_alone_is_enough_on_postgresql(store_url: str) -> None:
    """Without LISTEN (e.g. behind a pooler that drops it) polling still bounds the delay."""
    delay, report = run_peer_and_revoke(store_url, "--no-listen")
    assert report["hits"] > 10, report
    assert 0 <= delay < 1.25, delay
