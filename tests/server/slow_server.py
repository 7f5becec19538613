"""A real `serve()` process whose role lookups are slow, for the SIGTERM drain test.

    python -m tests.server.slow_server POLICY_DIR RECORDS_FILE DELAY_SECONDS [GRACE_SECONDS]

Each role lookup sleeps DELAY_SECONDS, so calls are reliably in flight when the test
sends SIGTERM; the audit log is buffered and its sink writes RECORDS_FILE only when
it is closed, so the file shows whether shutdown flushed what it had to.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from pdp.audit.record import DecisionRecord
from pdp.audit.sink import ChainHead
from pdp.server.app import serve
from pdp.server.config import load_config
from pdp.server.state import RoleBackend, Roles
from pdp.store.blocking import check_may_block


class SlowSource:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        check_may_block()  # as a database-backed source must: never sleep on the loop
        time.sleep(self.delay)
        return frozenset({"viewer"})

    def attributes(self, subject: str) -> Mapping[str, Any]:
        return {"tenant": "acme"}


class SlowBackend(RoleBackend):
    description = "slow test backend"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def load(self, known_roles: Collection[str]) -> Roles:
        return Roles(SlowSource(self.delay), lambda: "slow-1")


class FileAtCloseSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self.buffer: list[DecisionRecord] = []

    def head(self, chain: str) -> ChainHead | None:
        return None

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        self.buffer.extend(records)

    def close(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            for r in self.buffer:
                f.write(json.dumps({"decision_id": r.decision_id, "action": r.action}) + "\n")


def main() -> int:
    policies, records, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    grace = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    cfg = load_config(
        None,
        environ={},
        flags={
            "listen": "127.0.0.1:0",
            "policies": policies,
            "grace_seconds": grace,
            # Written after the drain, at close: what shutdown must flush.
            "audit.mode": "buffered",
            "audit.flush_interval": 60.0,
        },
    )
    return serve(cfg, backend=SlowBackend(delay), sink=FileAtCloseSink(records))


if __name__ == "__main__":
    sys.exit(main())
