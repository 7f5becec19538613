"""The background writer: group commit, the hash chain, durability modes, sampling.

Request threads `submit` the records of a call; one writer thread takes everything
queued, places the records in the chain (in commit order), writes them as one batch
and, in `durable` mode, wakes the callers waiting on that batch. While a batch is
being written the next one gathers, so the cost of an fsync or a commit is shared by
every call that arrived meanwhile (group commit).

Modes:

- `durable`: `submit` returns a `Ticket`; the caller waits on it and answers only
  when its records are stored. When the sink fails the ticket says so, and the
  server denies: no decision goes out without its record.
- `buffered`: `submit` returns at once; records are written within
  `flush_interval` seconds. When the sink fails they are kept and retried, up to
  `buffer_limit` records; past that new records are dropped and counted in
  `stats().lost`, and the failure is logged: never silent.

Allowed decisions may be sampled (`sample_allowed` < 1): a kept fraction chosen by
the decision id, so every replica keeps the same ones. Denials are always kept.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pdp.audit.jsonl import check_chain
from pdp.audit.record import GENESIS, DecisionRecord, seal
from pdp.audit.sink import DecisionSink

log = logging.getLogger("pdp.audit")

Mode = Literal["durable", "buffered"]
MODES: tuple[Mode, ...] = ("durable", "buffered")


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters for ServerInfo and health: what happened to every submitted record."""

    mode: str
    healthy: bool
    written: int  # stored in the sink
    lost: int  # could not be written and are gone (buffer full, failed at shutdown)
    rejected: int  # durable: not stored, and the caller was told (it denied)
    sampled_out: int  # allowed decisions left out by sampling
    pending: int  # waiting to be written
    batches: int
    last_error: str


class Ticket:
    """The outcome of one `submit`: wait for it in `durable` mode."""

    __slots__ = ("_event", "ok", "error", "cancelled")

    def __init__(self, done: bool = False) -> None:
        self._event = threading.Event()
        self.ok = done
        self.error = ""
        self.cancelled = False
        if done:
            self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the records are stored; False when they failed or time ran out.

        After a timeout the ticket is cancelled: records not yet taken for a batch are
        then never written (one taken already may still be).
        """
        if not self._event.wait(timeout):
            self.cancelled = True
            if not self.error:
                self.error = f"the audit log did not confirm the write within {timeout} s"
            return False
        return self.ok

    def _finish(self, ok: bool, error: str = "") -> None:
        self.ok, self.error = ok, error
        self._event.set()


_DONE = Ticket(done=True)


class AuditWriter:
    """One writer thread per sink and chain; thread-safe `submit`.

    `on_health(healthy, reason)` is called when the sink starts or stops working
    (for the server's health status); it runs on the writer thread.
    """

    def __init__(
        self,
        sink: DecisionSink,
        *,
        chain: str,
        mode: Mode = "durable",
        flush_interval: float = 0.2,
        max_batch: int = 1000,
        buffer_limit: int = 100_000,
        sample_allowed: float = 1.0,
        retry_interval: float = 1.0,
        on_health: Callable[[bool, str], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= sample_allowed <= 1.0:
            raise ValueError("sample_allowed must be between 0 and 1")
        self.sink = sink
        self.chain = check_chain(chain)
        self.mode: Mode = mode
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.buffer_limit = buffer_limit
        self.sample_allowed = sample_allowed
        # Decision ids whose hash falls below this are kept.
        self._sample_cut = int(sample_allowed * (1 << 64))
        self.retry_interval = retry_interval
        self.on_health = on_health
        self._cond = threading.Condition()
        self._queue: deque[tuple[Sequence[DecisionRecord], Ticket]] = deque()
        self._pending = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        # Chain state; touched by the writer thread only (after start).
        self._seq = 0
        self._prev = GENESIS
        self._opened = False
        # Counters (written under _cond or by the writer thread; read racily for stats).
        self._written = self._lost = self._rejected = self._sampled_out = self._batches = 0
        self._healthy = True
        self._last_error = ""
        self._retry_at = 0.0  # monotonic time of the next attempt while failing
        self._flush_at = 0.0  # buffered: monotonic time the queue is written at the latest

    # --- the request side -----------------------------------------------------------------

    def start(self) -> None:
        """Open the chain (continuing from the sink's last record) and start the thread.

        A sink that cannot be opened now is not fatal: the thread retries, and until it
        succeeds the writer is unhealthy and durable tickets fail.
        """
        self._try_open()
        self._thread = threading.Thread(target=self._run, name="pdp-audit-writer", daemon=True)
        self._thread.start()

    def submit(self, records: Sequence[DecisionRecord]) -> Ticket:
        """Queue the records of one call, in decision order; see the modes above."""
        if self.sample_allowed < 1.0:
            kept = [r for r in records if not r.allowed or self._sampled(r.decision_id)]
            if len(kept) != len(records):
                with self._cond:
                    self._sampled_out += len(records) - len(kept)
                records = kept
        if not records:
            return _DONE
        durable = self.mode == "durable"
        ticket = Ticket() if durable else _DONE
        with self._cond:
            if self._closing:
                if durable:
                    self._rejected += len(records)
                    ticket._finish(False, "the audit log is closed (the server is stopping)")
                else:
                    self._lost += len(records)
                return ticket
            if not durable and self._pending + len(records) > self.buffer_limit:
                self._lost += len(records)
                if self._lost == len(records) or self._lost % 10_000 < len(records):
                    log.error(
                        "audit buffer full (%d records): %d records lost so far; %s",
                        self.buffer_limit,
                        self._lost,
                        self._last_error or "the sink is too slow",
                    )
                return ticket
            was_empty = not self._queue
            self._queue.append((records, ticket))
            self._pending += len(records)
            # Buffered: wake the writer to start the flush clock, or when a batch is full.
            if durable or was_empty or self._pending >= self.max_batch:
                self._cond.notify()
        return ticket

    def _sampled(self, decision_id: str) -> bool:
        digest = hashlib.blake2b(decision_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._sample_cut

    @property
    def healthy(self) -> bool:
        """False while the sink fails (or could not be opened yet)."""
        return self._healthy

    def stats(self) -> WriterStats:
        return WriterStats(
            mode=self.mode,
            healthy=self._healthy,
            written=self._written,
            lost=self._lost,
            rejected=self._rejected,
            sampled_out=self._sampled_out,
            pending=self._pending,
            batches=self._batches,
            last_error=self._last_error,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (one last try when the sink fails), stop, close the sink."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("audit writer did not finish within %.1f s", timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._pending = 0
        for records, ticket in left:
            self._give_up(records, ticket, "the audit log was closed before this was written")
        try:
            self.sink.close()
        except Exception:
            log.exception("closing the audit sink failed")

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._wait_time())
                if self._closing and not self._queue:
                    return
                batch = self._take()
            now = time.monotonic()
            if not self._healthy and now < self._retry_at and not self._closing:
                # Durable mode, sink failing, not yet time to try again: deny at once
                # rather than keep every caller waiting for the next attempt.
                for records, ticket in batch:
                    self._give_up(records, ticket, f"the audit log is failing: {self._last_error}")
                continue
            if not self._opened and not self._try_open():
                self._failed(batch)
                continue
            if batch:
                self._write(batch)
            else:  # a successful probe of a sink that had failed
                self._set_health(True, "")

    def _due(self) -> bool:
        """Whether the writer thread has something to do now (called under the lock)."""
        if self._closing:
            return True
        now = time.monotonic()
        if not self._queue:
            return not self._healthy and now >= self._retry_at  # probe the sink
        if self.mode == "durable":
            return True
        if not self._healthy:
            return now >= self._retry_at
        return self._pending >= self.max_batch or now >= self._flush_at

    def _wait_time(self) -> float | None:
        now = time.monotonic()
        if not self._healthy:
            return max(0.0, self._retry_at - now) + 0.001
        if self._queue and self.mode == "buffered":
            return max(0.0, self._flush_at - now) + 0.001
        return None

    def _take(self) -> list[tuple[Sequence[DecisionRecord], Ticket]]:
        """Up to `max_batch` records from the front of the queue (called under the lock)."""
        batch: list[tuple[Sequence[DecisionRecord], Ticket]] = []
        n = 0
        while self._queue and (n == 0 or n + len(self._queue[0][0]) <= self.max_batch):
            records, ticket = self._queue.popleft()
            self._pending -= len(records)
            if ticket.cancelled:
                # The caller gave up waiting and denied: do not record what it never said.
                self._rejected += len(records)
                continue
            batch.append((records, ticket))
            n += len(records)
        return batch

    def _write(self, batch: list[tuple[Sequence[DecisionRecord], Ticket]]) -> None:
        if not batch:
            return
        if not self._opened and not self._try_open():
            self._failed(batch)
            return
        sealed: list[DecisionRecord] = []
        lines: list[str] = []
        seq, prev = self._seq, self._prev
        for records, _ in batch:
            for r in records:
                seq += 1
                s, line = seal(r, self.chain, seq, prev)
                prev = s.hash
                sealed.append(s)
                lines.append(line)
        try:
            self.sink.write_batch(sealed, lines)
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._opened = False  # re-read the head: the sink may hold part of the batch
            self._failed(batch)
            return
        self._seq, self._prev = seq, prev
        with self._cond:
            self._written += len(sealed)
            self._batches += 1
            self._flush_at = time.monotonic() + self.flush_interval
        self._set_health(True, "")
        for _, ticket in batch:
            ticket._finish(True)

    def _failed(self, batch: list[tuple[Sequence[DecisionRecord], Ticket]]) -> None:
        self._set_health(False, self._last_error)
        with self._cond:
            self._retry_at = time.monotonic() + self.retry_interval
            if self.mode == "buffered" and not self._closing:
                # Keep them for the next try, in order, ahead of what came since.
                for item in reversed(batch):
                    self._queue.appendleft(item)
                    self._pending += len(item[0])
                return
        for records, ticket in batch:
            self._give_up(records, ticket, self._last_error)

    def _give_up(self, records: Sequence[DecisionRecord], ticket: Ticket, why: str) -> None:
        with self._cond:
            if ticket is _DONE:
                self._lost += len(records)
                log.error("audit: %d records could not be written: %s", len(records), why)
            else:
                self._rejected += len(records)
        if ticket is not _DONE:
            ticket._finish(False, why)

    def _try_open(self) -> bool:
        try:
            head = self.sink.head(self.chain)
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._set_health(False, self._last_error)
            self._retry_at = time.monotonic() + self.retry_interval
            return False
        self._seq, self._prev = (head.seq, head.hash) if head else (0, GENESIS)
        self._opened = True
        return True

    def _set_health(self, healthy: bool, reason: str) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("audit log writable again (%s)", self.chain)
        else:
            log.error("audit log failing: %s", reason)
        if self.on_health is not None:
            try:
                self.on_health(healthy, reason)
            except Exception:
                log.exception("audit health listener failed")
