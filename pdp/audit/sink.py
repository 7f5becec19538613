"""Where sealed decision records go: one small protocol, and the in-memory sink.

A sink stores records that the writer has already placed in their chain; it never
assigns positions itself. The file sink (`pdp.audit.jsonl`) and the SQL sink
(`pdp.audit.sql`) implement the same protocol; which one a server uses is decided
in one place at start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pdp.audit.record import DecisionRecord, parse_line


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a chain: where the next record continues it."""

    seq: int
    hash: str


class SinkError(Exception):
    """A sink could not store or read records; one line for people (and the log)."""


class DecisionSink(Protocol):
    """Stores sealed records, in the order given.

    `write_batch` returns only when the records are durable (fsync'd, committed) and
    raises when they are not; it stores all of them or, as far as the medium allows,
    none. It is called from one thread at a time.
    """

    def head(self, chain: str) -> ChainHead | None:
        """The last stored record of `chain`, or None when the chain is empty.

        Called before the first write and after a failed one, so the writer continues
        the chain from what is really stored. May repair the medium (e.g. cut a line
        that a crash left half-written).
        """
        ...

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        """Store `records`; `lines` are their JSON lines (the canonical form, sealed)."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...


class MemorySink:
    """Keeps sealed records in a list; for tests and embedding.

    `fail_with` makes the next writes raise it (to test what a failing sink does);
    set it back to None to heal the sink.
    """

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []
        self.lines: list[str] = []
        self.batches = 0
        self.closed = False
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def head(self, chain: str) -> ChainHead | None:
        with self._lock:
            for r in reversed(self.records):
                if r.chain == chain:
                    return ChainHead(r.seq, r.hash)
        return None

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.records.extend(records)
            self.lines.extend(lines)
            self.batches += 1

    def close(self) -> None:
        self.closed = True

    def snapshot(self) -> list[DecisionRecord]:
        """The records stored so far, re-read from their lines (as a reader sees them)."""
        with self._lock:
            return [parse_line(line)[0] for line in self.lines]
