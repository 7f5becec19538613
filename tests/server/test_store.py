"""The SQL store as seen through the server: live changes, versions, and an outage."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.client import PdpClient
from pdp.server.app import PdpServer
from pdp.store import migrate
from pdp.store.sql import SqlStore
from tests.server.support import ALICE, BOB, DOC, health_status, server_config, wait_for
from tests.store.support import PgSchema, TcpProxy, pg_reachable


def serve_store(policy_dir: Path, url: str) -> tuple[PdpServer, PdpClient]:
    cfg = server_config(
        policy_dir,
        {
            "store.url": url,
            "store.poll_interval": 0.05,
            "store.max_staleness": 0.5,
            "audit.path": str(policy_dir.parent / "pdp-audit"),
        },
    )
    server = PdpServer(cfg)
    port = server.start()
    return server, PdpClient(f"127.0.0.1:{port}", timeout=5)


def test_sqlite_store_changes_are_seen_with_their_version(policy_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pdp.db'}"
    with SqlStore(url) as admin:
        admin.set_attributes("user:alice", {"tenant": "acme"})
        admin.set_attributes("user:bob", {"tenant": "acme"})
        admin.grant("user:alice", "viewer", "tenant/acme")
        server, client = serve_store(policy_dir, url)
        try:
            assert health_status(f"127.0.0.1:{server.port}") == "SERVING"
            d = client.check(ALICE, "read", DOC)
            assert d.allowed
            first = d.bindings_version
            assert first and client.server_info().bindings_version == first
            assert not client.check(BOB, "write", DOC).allowed
            admin.grant("user:bob", "editor", "tenant/acme")
            d = wait_for(
                lambda: (x := client.check(BOB, "write", DOC)).allowed and x,
                what="the grant to be seen",
            )
            assert int(d.bindings_version) > int(first)
        finally:
            client.close()
            server.stop(0.5)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PgSchema]:
    why = pg_reachable()
    if why is not None:
        pytest.fail(f"PostgreSQL is not reachable: {why}", pytrace=False)
    schema = PgSchema()
    try:
        store = SqlStore(schema.url(), check_schema=False)
        store.run(migrate.upgrade)
        store.close()
        yield schema
    finally:
        schema.drop()


def test_store_outage_through_the_server(policy_dir: Path, pg: PgSchema) -> None:
    """The database is cut off for real (a TCP proxy is stopped), then comes back."""
    direct = SqlStore(pg.url())
    proxy = TcpProxy(direct.url_obj.host or "127.0.0.1", direct.url_obj.port or 5432).start()
    direct.set_attributes("user:alice", {"tenant": "acme"})
    direct.grant("user:alice", "viewer", "tenant/acme")
    via = pg.url(port=proxy.port).render_as_string(hide_password=False)
    server, client = serve_store(policy_dir, via)
    try:
        assert client.check(ALICE, "read", DOC).allowed
        proxy.stop()
        d = wait_for(
            lambda: (x := client.check(ALICE, "read", DOC)).diagnostics and x,
            what="the outage to be seen",
        )
        assert not d.allowed  # never allowed on missing data
        assert [x.code for x in d.diagnostics] == ["store_unavailable"]
        assert "Traceback" not in d.diagnostics[0].message
        proxy.start()
        wait_for(lambda: client.check(ALICE, "read", DOC).allowed, what="the recovery")
    finally:
        client.close()
        server.stop(0.5)
        proxy.stop()
        direct.close()


def test_a_password_in_the_store_url_query_is_never_shown(
    policy_dir: Path, pg: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    # libpq takes `?password=`; the database does not exist, so the error names the URL.
    url = pg.url().set(database="pdp_no_such_db").render_as_string(hide_password=False)
    url += ("&" if "?" in url else "?") + "password=S3cretPW"
    with caplog.at_level(logging.INFO):
        server, client = serve_store(policy_dir, url)
    try:
        info = client.server_info()
        assert not info.last_reload.ok and info.last_reload.what == "bindings"
        errors = "\n".join(info.last_reload.errors)
        assert "pdp_no_such_db" in errors and "password=***" in errors
        assert "S3cretPW" not in errors and "S3cretPW" not in caplog.text
    finally:
        client.close()
        server.stop(0.5)
