"""Helpers for the store tests: a real PostgreSQL schema per run, and a TCP proxy to cut.

The outage tests do not mock the driver: the store talks to PostgreSQL through
`TcpProxy`, which the test stops (closing every live connection and refusing new
ones) and starts again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

PG_URL = os.environ.get("PDP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Every table `reset()` empties: the bindings store's and the identity tables.
TABLES = (
    "pdp_bindings",
    "pdp_memberships",
    "pdp_subjects",
    "pdp_api_keys",
    "pdp_sessions",
    "pdp_token_revocations",
    "pdp_token_cutoffs",
)

POLICIES = {
    "roles.pdp": """
role viewer
role editor : viewer
role admin : editor
derived role owner on document when resource.owner == subject.id

resource document {
  actions read, update, delete
  permit viewer to read
  permit editor to update
  permit admin to *
  permit owner to read, update
}
""",
}


def write_policies(root: Path) -> Path:
    """The tests' own small policy set (roles viewer < editor < admin, derived owner)."""
    d = root / "policies"
    d.mkdir(exist_ok=True)
    for name, body in POLICIES.items():
        (d / name).write_text(body, encoding="utf-8")
    return d


class PgSchema:
    """A fresh schema `pdp_test_<random>` on the test PostgreSQL, dropped by `drop()`.

    The store reaches it through `search_path` in the URL (`options=-csearch_path=...`),
    so every connection, a second process's included, lands in it.
    """

    def __init__(self, base_url: str = PG_URL) -> None:
        self.base = make_url(base_url)
        self.name = f"pdp_test_{os.getpid()}_{secrets.token_hex(4)}"
        self._admin = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))

    def url(self, port: int | None = None) -> URL:
        """The URL of the schema, optionally through a proxy listening on `port`."""
        url = self.base.update_query_dict(
            {"options": f"-csearch_path={self.name}", "application_name": self.name}
        )
        return url.set(port=port) if port is not None else url

    def reset(self) -> None:
        """Empty the store's tables and restart its revision: each test starts clean."""
        with self._admin.connect() as conn:
            tables = ", ".join(f'"{self.name}".{t}' for t in TABLES)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            conn.execute(text(f'UPDATE "{self.name}".pdp_store_revision SET revision = 0'))

    def drop(self) -> None:
        with self._admin.connect() as conn:
            # Connections a failed test left open would block DROP; end them first.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND application_name = :name"
                ),
                {"name": self.name},
            )
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._admin.dispose()


def pg_reachable(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers, else why not (one line)."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # any failure is reported the same way: not reachable
        return str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    finally:
        engine.dispose()


class TcpProxy:
    """A loopback TCP proxy to `target` that a test can stop (an outage) and start again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        t = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        """Refuse new connections and cut every open one, as a database going away does."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Wait until `cond()` holds; returns the seconds waited, or raises AssertionError."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start
