"""Helpers for the audit tests: records from real decisions, logs on disk, PostgreSQL."""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pdp.audit.jsonl import JsonlSink
from pdp.audit.record import AuditConfig, DecisionRecord, build_record, to_us
from pdp.audit.writer import AuditWriter
from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decide import decide
from pdp.engine.request import Action, Request, Resource, Subject
from tests.helpers import compile_files

PG_URL = os.environ.get("PDP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

POLICIES = {
    "roles.pdp": "role viewer\nrole editor : viewer\n",
    "docs.pdp": """\
derived role owner on doc when resource has owner and resource.owner == subject.id

resource doc {
  actions read, write

  @id("doc.viewer-read")
  permit viewer to read

  @id("doc.editor-write")
  permit editor to write

  @id("doc.owner")
  permit owner to *

  @id("doc.tenant")
  forbid any to * unless resource.tenant == subject.tenant
}
""",
}

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALL = AuditConfig(include=frozenset({"subject", "action", "resource", "context"}))


@functools.cache
def policy() -> CompiledPolicySet:
    return compile_files(POLICIES)


def write_policies(root: Path) -> Path:
    d = root / "policies"
    d.mkdir(exist_ok=True)
    for name, body in POLICIES.items():
        (d / name).write_text(body, encoding="utf-8")
    return d


def req(
    subject: str = "alice",
    action: str = "read",
    resource: str = "1",
    *,
    tenant: str = "acme",
    subject_tenant: str = "acme",
    props: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    at: datetime = T0,
) -> Request:
    return Request(
        Subject("user", subject, {"tenant": subject_tenant, **(props or {})}),
        Action(action),
        Resource("doc", resource, {"tenant": tenant}, ("folder/7",)),
        context or {},
        at,
    )


def record(
    i: int,
    *,
    ps: CompiledPolicySet | None = None,
    roles: frozenset[str] = frozenset({"viewer"}),
    config: AuditConfig = ALL,
    caller: str = "svc-a",
    **kw: Any,
) -> DecisionRecord:
    """The record of a real decision; `i` varies subject, action, tenant and time."""
    ps = ps or policy()
    kw.setdefault("subject", ["alice", "bob", "carol"][i % 3])
    kw.setdefault("action", "write" if i % 5 == 0 else "read")
    kw.setdefault("resource", str(i))
    kw.setdefault("tenant", "globex" if i % 4 == 0 else "acme")
    kw.setdefault("at", T0 + timedelta(seconds=i))
    r = req(**kw)
    d = decide(ps, r, roles)
    return build_record(
        d,
        r,
        decision_id=f"d-{i:05d}",
        caller=caller,
        latency_us=100 + i,
        bindings_version="7",
        policy=ps,
        config=config,
    )


def write_log(directory: Path, records: Sequence[DecisionRecord], chain: str = "host") -> None:
    """Write `records` through a durable writer into a JSONL audit directory."""
    w = AuditWriter(JsonlSink(directory), chain=chain, mode="durable")
    w.start()
    try:
        assert w.submit(records).wait(10)
    finally:
        w.close()


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
        time.sleep(0.01)


def us(t: datetime) -> int:
    return to_us(t)


class PgSchema:
    """A fresh PostgreSQL schema for this run, reached through `search_path` in the URL."""

    def __init__(self) -> None:
        self.base = make_url(PG_URL)
        self.name = f"pdp_audit_test_{os.getpid()}_{secrets.token_hex(4)}"
        self._admin = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))

    def url(self) -> str:
        url = self.base.update_query_dict({"options": f"-csearch_path={self.name}"})
        return url.render_as_string(hide_password=False)

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self._admin.dispose()


def pg_reachable() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    try:
        engine = create_engine(make_url(PG_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect is reported, whatever its type
        return str(exc).splitlines()[0]
