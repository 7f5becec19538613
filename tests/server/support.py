"""Helpers for the server tests: test policies, starting servers, waiting for things."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.client import PdpClient
from pdp.server.app import PdpServer
from pdp.server.config import ServerConfig, load_config
from tests.identity.keys import jwks, public_jwk, rsa_key

ROOT = Path(__file__).resolve().parents[2]

ROLES = """\
role viewer
role editor : viewer
role admin : editor
"""

DOCS = """\
derived role owner on doc when resource has owner and resource.owner == subject.id

resource doc {
  actions read, write, delete

  @id("doc.viewer-read")
  permit viewer to read

  @id("doc.editor-write")
  permit editor to write

  @id("doc.owner")
  permit owner to *

  @id("doc.admin")
  permit admin to *

  @id("doc.locked")
  forbid any to write, delete when resource has locked and resource.locked

  @id("doc.tenant")
  forbid any to * unless resource.tenant == subject.tenant
}
"""

NOTES = """\
resource note {
  actions read

  @id("note.viewer-read")
  permit viewer to read
}
"""

POLICIES = {"roles.pdp": ROLES, "docs.pdp": DOCS, "notes.pdp": NOTES}

BINDINGS = """\
subjects:
  - id: user:alice
    attributes: {tenant: acme}
  - id: user:bob
    attributes: {tenant: acme}
  - id: user:mallory
    attributes: {tenant: globex}
bindings:
  - {subject: user:alice, role: viewer, scope: tenant/acme}
  - {subject: user:bob, role: editor, scope: tenant/acme}
  - {subject: user:mallory, role: admin}
"""

ALICE = {"type": "user", "id": "alice"}
BOB = {"type": "user", "id": "bob"}
MALLORY = {"type": "user", "id": "mallory"}
DOC = {"type": "doc", "id": "1", "properties": {"tenant": "acme"}}
LOCKED = {"type": "doc", "id": "2", "properties": {"tenant": "acme", "locked": True}}
NOTE = {"type": "note", "id": "n1", "properties": {"tenant": "acme"}}


@dataclass
class Running:
    server: PdpServer
    port: int
    client: PdpClient
    policy_dir: Path
    bindings_file: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def health_status(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A server in a subprocess; `lines` is what it printed on stdout."""

    popen: subprocess.Popen[str]
    port: int
    lines: list[str]

    def terminate(self) -> None:
        self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """End the process if it still runs, and close its pipe (always call at the end)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start_process(args: list[str], *, listening: int = 1, timeout: float = 30) -> Proc:
    """Run `python args...` and wait until it printed `listening` listening lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert popen.stdout is not None
    lines: list[str] = []
    ports: list[int] = []
    deadline = time.monotonic() + timeout
    while len(ports) < listening:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([popen.stdout], [], [], max(left, 0))
        if not ready:
            Proc(popen, 0, lines).kill()
            raise AssertionError("server did not start:\n" + "".join(lines))
        line = popen.stdout.readline()
        if not line:
            Proc(popen, 0, lines).kill()
            raise AssertionError("server exited:\n" + "".join(lines))
        lines.append(line)
        if "listening on" in line:
            ports.append(int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1]))
    return Proc(popen, ports[0], lines)


def drain_output(proc: Proc) -> str:
    """Everything the process printed (call after it exited)."""
    assert proc.popen.stdout is not None
    return "".join(proc.lines) + proc.popen.stdout.read()


def thread_pool_settings(directory: Path) -> dict[str, object]:
    """Settings that make the server a thread-pool one: a JWT key set (written into
    `directory`) means any call may wait on a credential lookup."""
    (directory / "jwks.json").write_bytes(jwks(public_jwk(rsa_key(), "rsa-1")))
    return {
        "identity.jwt.issuer": "https://issuer.test",
        "identity.jwt.audiences": ["pdp"],
        "identity.jwt.jwks_file": str(directory / "jwks.json"),
    }


def server_config(policies: Path, flags: dict[str, object]) -> ServerConfig:
    """Settings for a test server on a free loopback port: `policies`, then `flags`."""
    return load_config(
        None,
        environ={},
        flags={"listen": "127.0.0.1:0", "policies": str(policies), **flags},
    )
