"""Where decision records go after each call: the seam the audit log plugs into.

The service builds one `DecisionRecord` per decision and hands it to the
`DecisionSink` chosen at start-up (`pdp.server.app`). The durable, hash-chained
audit log is a sink of its own (the audit issue); until then there are two: none,
and JSON lines through the `pdp.audit` logger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What the audit log keeps about one decision (attributes are not recorded here)."""

    decision_id: str
    time: str  # ISO 8601, UTC
    caller: str  # the client certificate identity, or the peer address
    subject_type: str
    subject_id: str
    roles_used: tuple[str, ...]
    action: str
    resource_type: str
    resource_id: str
    allowed: bool
    reasons: tuple[str, ...]
    diagnostics: tuple[str, ...]  # `code: message` each
    policy_version: str
    bindings_version: str
    latency_us: int  # of the whole call the decision was part of


class DecisionSink(Protocol):
    """Takes decision records; must not block the call for long, and must not raise."""

    def submit(self, records: Sequence[DecisionRecord]) -> None:
        """Hand off the records of one call, in decision order."""
        ...

    def close(self) -> None:
        """Flush what is buffered; called once at shutdown, after the last call ended."""
        ...


class LogSink:
    """Each record as one JSON line on the `pdp.audit` logger (INFO)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("pdp.audit")

    def submit(self, records: Sequence[DecisionRecord]) -> None:
        if self._log.isEnabledFor(logging.INFO):
            for r in records:
                self._log.info("%s", json.dumps(asdict(r), separators=(",", ":")))

    def close(self) -> None:
        for h in self._log.handlers:
            h.flush()


class MemorySink:
    """Keeps every record in a list; for tests and embedding."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []
        self.closed = False

    def submit(self, records: Sequence[DecisionRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        self.closed = True
