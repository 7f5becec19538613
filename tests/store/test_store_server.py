"""The store behind `pdp serve`: a restored SQLite file is served, and a store that
cannot be opened is one clear line, never a dead loading thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import ArgumentError

import pdp.store.sql
from pdp.client import PdpClient
from pdp.server.app import PdpServer
from pdp.server.roles import SqlStoreBackend
from pdp.server.state import RoleBackendError
from pdp.store.sql import SqlStore
from tests.server.support import ALICE, DOC, POLICIES, server_config, wait_for


def policies(root: Path) -> Path:
    d = root / "policies"
    d.mkdir()
    for name, body in POLICIES.items():
        (d / name).write_text(body, encoding="utf-8")
    return d


def test_a_restored_sqlite_file_is_what_the_server_answers_from(tmp_path: Path) -> None:
    path = tmp_path / "pdp.db"
    url = f"sqlite:///{path}"
    with SqlStore(url) as admin:
        admin.set_attributes("user:alice", {"tenant": "acme"})
        admin.grant("user:alice", "viewer", "tenant/acme")
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    with SqlStore(f"sqlite:///{backup}") as restored:  # the backup, then a revoke in it
        restored.revoke("user:alice", "viewer", "tenant/acme")
    cfg = server_config(
        policies(tmp_path),
        {
            "store.url": url,
            "store.poll_interval": 0.05,
            "audit.path": str(tmp_path / "pdp-audit"),
        },
    )
    server = PdpServer(cfg)
    client = PdpClient(f"127.0.0.1:{server.start()}", timeout=5)
    try:
        assert client.check(ALICE, "read", DOC).allowed
        for f in tmp_path.glob("pdp.db*"):
            f.unlink()
        backup.rename(path)
        wait_for(lambda: not client.check(ALICE, "read", DOC).allowed, what="the restore")
    finally:
        client.close()
        server.stop(0.5)


def test_a_store_that_fails_to_open_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ArgumentError("Invalid argument(s) 'x' sent to create_engine()\nmore detail")

    monkeypatch.setattr(pdp.store.sql, "SqlStore", broken)
    backend = SqlStoreBackend("postgresql://pdp:s3cret@db/pdp")
    with pytest.raises(RoleBackendError) as info:
        backend.load({"viewer"})
    assert str(info.value) == (
        "the store at postgresql://pdp:***@db/pdp cannot be opened: "
        "Invalid argument(s) 'x' sent to create_engine()"
    )
