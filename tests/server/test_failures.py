"""Health states while loading, internal errors, and a role source that fails."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pdp.audit.sink import MemorySink
from pdp.client import PdpClient, PdpError
from pdp.server.app import PdpServer
from pdp.server.config import load_config
from pdp.server.service import peer_address
from pdp.server.state import RoleBackend, RoleBackendError, Roles
from pdp.store.errors import StoreUnavailable
from tests.server.support import ALICE, DOC, health_status, wait_for


class Source:
    """A role source that fails for some subjects: `user:boom` (a bug), `user:down` (store)."""

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        if subject == "user:boom":
            raise RuntimeError("secret internals /etc/passwd")
        if subject == "user:down":
            raise StoreUnavailable("cannot reach the database at sqlite:///x.db: gone")
        return frozenset({"viewer"})

    def attributes(self, subject: str) -> Mapping[str, Any]:
        return {"tenant": "acme"}


class Backend(RoleBackend):
    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.gate = gate
        self.fail = fail
        self.description = "test backend"

    def load(self, known_roles: Collection[str]) -> Roles:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RoleBackendError("cannot reach the database at postgresql://db/pdp")
        return Roles(Source(), lambda: "rev-7")


def start(policy_dir: Path, backend: RoleBackend, **kw: Any) -> tuple[PdpServer, PdpClient]:
    flags = {
        "listen": "127.0.0.1:0",
        "policies": str(policy_dir),
        "audit.path": str(policy_dir.parent / "pdp-audit"),
    }
    cfg = load_config(None, environ={}, flags=flags)
    server = PdpServer(cfg, backend=backend, sink=kw.get("sink"))
    port = server.start(wait_ready=kw.get("wait_ready", True))
    return server, PdpClient(f"127.0.0.1:{port}", timeout=5)


def test_not_serving_until_loaded(policy_dir: Path) -> None:
    gate = threading.Event()
    server, client = start(policy_dir, Backend(gate), wait_ready=False)
    target = f"127.0.0.1:{server.port}"
    try:
        assert health_status(target) == "NOT_SERVING"
        assert health_status(target, "pdp.v1.DecisionService") == "NOT_SERVING"
        with pytest.raises(PdpError) as exc:
            client.check(ALICE, "read", DOC)
        assert exc.value.code == "UNAVAILABLE"
        assert client.server_info().policy_version == ""
        gate.set()
        wait_for(lambda: health_status(target) == "SERVING", what="SERVING")
        assert client.check(ALICE, "read", DOC).allowed
    finally:
        gate.set()
        client.close()
        server.stop(0.5)


def test_store_unreachable_at_start_is_not_serving_and_reported(policy_dir: Path) -> None:
    server, client = start(policy_dir, Backend(fail=True))
    target = f"127.0.0.1:{server.port}"
    try:
        assert health_status(target) == "NOT_SERVING"
        info = client.server_info()
        assert not info.last_reload.ok and info.last_reload.what == "bindings"
        assert "cannot reach the database" in info.last_reload.errors[0]
    finally:
        client.close()
        server.stop(0.5)


def test_internal_error_is_a_logged_deny(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = start(policy_dir, Backend())
    try:
        with caplog.at_level(logging.ERROR, logger="pdp.server"):
            ds = client.check_actions({"type": "user", "id": "boom"}, ["read", "write"], DOC)
        assert [d.allowed for d in ds] == [False, False]
        diag = ds[0].diagnostics[0]
        assert diag.code == "internal_error"
        assert "secret" not in diag.message and "Traceback" not in diag.message
        assert ds[0].decision_id in caplog.text and "RuntimeError" in caplog.text
        # Other subjects are unaffected.
        assert client.check(ALICE, "read", DOC).allowed
    finally:
        client.close()
        server.stop(0.5)


def test_store_outage_is_a_deny_with_store_unavailable(policy_dir: Path) -> None:
    server, client = start(policy_dir, Backend())
    try:
        down = {"type": "user", "id": "down"}
        ds = client.evaluations(
            [{"subject": down}, {"subject": ALICE}, {"subject": down}],
            action="read",
            resource=DOC,
        )
        assert [d.allowed for d in ds] == [False, True, False]
        assert ds[0].diagnostics[0].code == "store_unavailable"
        assert "cannot reach the database" in ds[0].diagnostics[0].message
        assert ds[1].bindings_version == "rev-7"
    finally:
        client.close()
        server.stop(0.5)


def test_records_reach_the_sink_and_it_is_closed(policy_dir: Path) -> None:
    sink = MemorySink()
    server, client = start(policy_dir, Backend(), sink=sink)
    d = client.check(ALICE, "read", DOC)
    client.evaluations([{"action": "read"}, {"action": "write"}], subject=ALICE, resource=DOC)
    client.close()
    server.stop(0.5)
    assert sink.closed
    assert [r.action for r in sink.records] == ["read", "read", "write"]
    first = sink.records[0]
    assert first.decision_id == d.decision_id
    assert (first.subject_id, first.resource_type, first.resource_id) == ("alice", "doc", "1")
    assert first.allowed and [x.rule for x in first.reasons] == ["doc.viewer-read"]
    assert first.policy_version == d.policy_version and first.bindings_version == "rev-7"
    assert first.caller == "ipv4:127.0.0.1"  # the address; the port is per connection


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.5:51234", "ipv4:10.0.0.5"),
        ("ipv6:%5B::1%5D:39878", "ipv6:[::1]"),  # how grpcio spells it
        ("ipv6:[2001:db8::7]:443", "ipv6:[2001:db8::7]"),
        ("unix:/run/pdp.sock", "unix:/run/pdp.sock"),
        ("ipv4:10.0.0.5", "ipv4:10.0.0.5"),
        ("", ""),
    ],
)
def test_the_audit_caller_is_the_peer_address_without_its_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address
