"""Fixtures for the server tests: a real PDP on a free loopback port, real clients.

The policies and bindings here are the tests' own (not the examples), so that the
expected decisions do not move when the example policies change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.client import PdpClient
from pdp.server.app import PdpServer
from tests.server.support import BINDINGS, POLICIES, Running, server_config


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    for name, text in POLICIES.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


@pytest.fixture
def bindings_file(tmp_path: Path) -> Path:
    p = tmp_path / "bindings.yaml"
    p.write_text(BINDINGS, encoding="utf-8")
    return p


@pytest.fixture
def running(policy_dir: Path, bindings_file: Path) -> Iterator[Running]:
    """The PDP in this process on 127.0.0.1:<free port>, with a fast reload debounce."""
    cfg = server_config(
        policy_dir, {"store.bindings_file": str(bindings_file), "reload.debounce_ms": 50}
    )
    server = PdpServer(cfg)
    port = server.start()
    client = PdpClient(f"127.0.0.1:{port}", timeout=5)
    try:
        yield Running(server, port, client, policy_dir, bindings_file)
    finally:
        client.close()
        server.stop(0.5)


@pytest.fixture
def client(running: Running) -> PdpClient:
    return running.client
