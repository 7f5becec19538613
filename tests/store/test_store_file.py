"""A SQLite store whose file is replaced (a restore from backup) or deleted while open.

The store must read the new file, not the deleted one its pooled connections still
hold, and must never make a new, empty database where the file was.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pdp.identity.apikeys import ApiKeyResolver, ApiKeys, KeyHasher
from pdp.identity.result import AuthnFailure, Identity
from pdp.store.cache import CachedRoleSource
from pdp.store.errors import StoreUnavailable
from pdp.store.identity import SqlApiKeys
from pdp.store.sql import SqlStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PEPPER = b"p" * 32


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, SqlStore]]:
    path = tmp_path / "pdp.db"
    store = SqlStore(f"sqlite:///{path}")
    try:
        yield path, store
    finally:
        store.close()


def backup(tmp_path: Path, *grants: tuple[str, str]) -> Path:
    """A separate store file (closed, so complete without its WAL) holding `grants`."""
    path = tmp_path / "backup.db"
    with SqlStore(f"sqlite:///{path}") as other:
        for subject, role in grants:
            other.grant(subject, role)
    return path


def restore(live: Path, copy: Path) -> None:
    """What an operator does: remove the store's files, copy the backup in."""
    for f in live.parent.glob(live.name + "*"):
        f.unlink()
    shutil.copy(copy, live)


def test_a_replaced_file_is_read_and_written_after_the_replacement(
    live: tuple[Path, SqlStore], tmp_path: Path
) -> None:
    path, store = live
    store.grant("user:alice", "admin")
    assert store.lookup("user:alice", ["global"], NOW).roles(NOW) == {"admin"}
    restore(path, backup(tmp_path, ("user:bob", "viewer")))
    # Every pooled connection (reads and writes) is on the deleted file: not used.
    assert store.lookup("user:alice", ["global"], NOW).roles(NOW) == frozenset()
    assert store.lookup("user:bob", ["global"], NOW).roles(NOW) == {"viewer"}
    assert [b.subject for b in store.list_bindings()] == ["user:bob"]
    assert store.generation == 1
    store.revoke("user:bob", "viewer")  # lands in the new file
    with SqlStore(f"sqlite:///{path}") as fresh:
        assert fresh.list_bindings() == []


def test_the_cache_drops_everything_when_the_file_is_replaced(
    live: tuple[Path, SqlStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when the new file happens to be at the same revision as the old one."""
    path, store = live
    store.grant("user:alice", "admin")
    copy = backup(tmp_path, ("user:bob", "viewer"))
    cache = CachedRoleSource(store)
    assert cache.roles_for("user:alice", ["global"], NOW) == {"admin"}
    assert cache.bindings_version == "1"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pdp.store"):
        restore(path, copy)
        cache.poll()  # what the watcher does every poll_interval
    assert cache.roles_for("user:alice", ["global"], NOW) == frozenset()
    assert cache.roles_for("user:bob", ["global"], NOW) == {"viewer"}
    assert cache.bindings_version == "1"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"the store's file {path} was replaced (restored from a backup?); reading the new "
        "file, and dropping all that was read from the old"
    ]


def test_a_deleted_file_is_an_outage_never_a_new_empty_store(
    live: tuple[Path, SqlStore], tmp_path: Path
) -> None:
    path, store = live
    store.grant("user:alice", "admin")
    copy = backup(tmp_path, ("user:alice", "admin"))
    cache = CachedRoleSource(store, max_staleness=30)
    assert cache.roles_for("user:alice", ["global"], NOW) == {"admin"}
    for f in path.parent.glob("pdp.db*"):
        f.unlink()
    with pytest.raises(StoreUnavailable) as info:
        store.lookup("user:bob", ["global"], NOW)
    assert info.value.message == (
        f"cannot reach the database at sqlite:///{path}: the database file {path} is gone "
        "(deleted or moved while in use); no new, empty one is made in its place"
    )
    with pytest.raises(StoreUnavailable):
        store.grant("user:carol", "viewer")  # writes too: nothing goes to a new file
    with pytest.raises(StoreUnavailable):
        cache.poll()
    with pytest.raises(StoreUnavailable, match="is gone"):
        cache.roles_for("user:bob", ["global"], NOW)  # not cached: denied at once
    assert not path.exists()
    # Back (the same inode number may be reused): read as a new file.
    shutil.copy(copy, path)
    cache.poll()
    assert cache.roles_for("user:alice", ["global"], NOW) == {"admin"}
    assert store.generation == 1


def test_api_keys_revoked_in_the_restored_file_are_refused(
    live: tuple[Path, SqlStore], tmp_path: Path
) -> None:
    path, store = live
    hasher = KeyHasher(PEPPER)
    repo = SqlApiKeys(store)
    issued = ApiKeys(repo, hasher).create("service", "indexer", now=NOW)
    resolver = ApiKeyResolver(repo, hasher)
    assert isinstance(resolver.resolve(issued.key, NOW + timedelta(minutes=1)), Identity)
    # The backup is the same data, and the key is revoked there (as `pdp apikeys
    # revoke --db` against the restored file would).
    copy = tmp_path / "backup.db"
    with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # a consistent copy, as `sqlite3 pdp.db .backup` makes
    with SqlStore(f"sqlite:///{copy}") as other:
        SqlApiKeys(other).revoke(issued.record.prefix, NOW + timedelta(minutes=2))
    restore(path, copy)
    result = resolver.resolve(issued.key, NOW + timedelta(minutes=3))
    assert isinstance(result, AuthnFailure), result
