"""The writer: group commit, the hash chain, durability modes, sampling.

Request threads `submit` the records of a call. Records are placed in the chain in
commit order and written in batches; nothing is written one record at a time on a
call's path.

- `durable`: the call waits on the `Ticket` that `submit` returns and is answered
  only once its records are stored; when the sink fails, the ticket says so and the
  server denies. Group commit is leader/follower: a call that finds no write in
  progress writes everything queued itself (its own records first among them);
  calls arriving meanwhile queue up, and when the write is done the first of them is
  woken to write the next batch for all of them. So one fsync (or commit) serves
  every call that arrived during the previous one, and no thread hand-off is added
  to a call's path beyond the wake-up it needs anyway. A call answered on an event
  loop must not block it: it submits with its `loop`, never leads, and awaits
  `Ticket.wait_async`; the background thread writes the batches such calls queue,
  and wakes each loop once per batch.
- `buffered`: `submit` returns at once; a background thread writes within
  `flush_interval` seconds. When the sink fails the records are kept and retried, up
  to `buffer_limit`; past that new ones are dropped and counted in `stats().lost`,
  and the failure is logged: never silent.

The background thread also probes a failing sink (every `retry_interval`), so a
durable server that stopped getting traffic (health NOT_SERVING) finds out when the
sink works again. Allowed decisions may be sampled (`sample_allowed` < 1): a kept
fraction chosen by the decision id, so every replica keeps the same ones; denials
are always kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from pdp.audit.jsonl import check_chain
from pdp.audit.record import (
    GENESIS,
    ChainedFields,
    DecisionRecord,
    RecordDraft,
    new_record,
    seal,
    seal_draft,
)
from pdp.audit.sink import DecisionSink

log = logging.getLogger("pdp.audit")

Mode = Literal["durable", "buffered"]
MODES: tuple[Mode, ...] = ("durable", "buffered")

# A draft is built into its record by the writer, when it is sealed (see RecordDraft).
Submitted = DecisionRecord | RecordDraft
Item = tuple[Sequence[Submitted], "Ticket"]


class SealedBatch(Sequence[DecisionRecord]):
    """A batch's sealed records, each made when a sink first reads it.

    A draft is sealed into its fields and its line (`seal_draft`); the line is what a
    file is written with, and the file sink reads only a batch's first and last
    record. Making every record anyway would add 1.5 µs to each 5.8 µs seal (measured).
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[DecisionRecord | ChainedFields] = []

    def append(self, item: DecisionRecord | ChainedFields) -> None:
        self._items.append(item)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> DecisionRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[DecisionRecord]: ...

    def __getitem__(self, index: int | slice) -> DecisionRecord | Sequence[DecisionRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._items)))]
        item = self._items[index]
        if isinstance(item, DecisionRecord):
            return item
        made = new_record(*item)
        self._items[index] = made  # made once, whoever reads it again
        return made


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

    __slots__ = (
        "_lock",
        "_writer",
        "_future",
        "ok",
        "error",
        "cancelled",
        "lead",
        "finished",
        "taken",
    )

    def __init__(
        self,
        writer: AuditWriter | None = None,
        *,
        done: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # A held lock that is released once: the cheapest wait-and-wake there is (one
        # C call each side), which matters on every durable call.
        self._lock = threading.Lock()
        self._writer = writer
        self.ok = done
        self.error = ""
        self.cancelled = False  # the caller gave up waiting (and denied)
        self.lead = False  # the lock was released to make the caller write, not because done
        self.finished = done
        # In a batch being written: its outcome is the ticket's, a time-out cannot undo it.
        self.taken = False
        # Awaited on `loop` (see wait_async): such a caller is never asked to lead.
        self._future: asyncio.Future[None] | None = (
            loop.create_future() if loop is not None and not done else None
        )
        if not done:
            self._lock.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the records are stored; False when they failed or time ran out.

        After a timeout the ticket is cancelled and its records are never written. Once
        they are taken into a batch being written, the time-out no longer applies: the
        call waits for that write, so the log never holds a record of a decision that
        was answered as a deny for want of one.
        """
        writer = self._writer
        if writer is None:
            return self.ok
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._lock.acquire(timeout=left)
            if got and self.finished:
                # The usual end, read without the writer's lock: `finished` is set before
                # the release we just acquired and never unset, and a finished ticket is
                # never promoted, so there is nothing left to decide under the lock.
                self._lock.release()
                return self.ok
            # INVARIANT: `lead`, `finished` and the releases of `_lock` change under the
            # writer's lock, so what we see here and the lock's state agree.
            with writer._cond:
                if not got:
                    if not (self.lead or self.finished):
                        if self.taken:
                            deadline = None  # being written: wait for the outcome
                            continue
                        self.cancelled = True
                        if not self.error:
                            self.error = (
                                f"the audit log did not confirm the write within {timeout} s"
                            )
                        return False
                    self._lock.acquire()  # released for us just now: free
                lead = self.lead and not self.finished
                self.lead = False
            if lead:
                # Our records head the queue; writing them finishes us (releasing the lock
                # we hold), and the next round of the loop returns.
                writer._lead()
                continue
            self._lock.release()  # a second wait() returns at once
            return self.ok

    async def wait_async(self, timeout: float | None = None) -> bool:
        """As `wait`, for a ticket submitted with a `loop`: awaited there, no thread held."""
        future = self._future
        if future is None:
            return self.wait(timeout)
        if timeout is not None and not self.finished:
            writer = self._writer
            assert writer is not None
            writer._deadlines_of(future.get_loop()).add(self, timeout)
        await future  # resolved by the write, or by `_expire`
        return self.ok

    def _expire(self, timeout: float) -> None:
        """The caller's time-out (on its loop): give up, unless the write has the records."""
        writer = self._writer
        assert writer is not None and self._future is not None
        if self._future.done():
            # Resolved, or cancelled with the call (the client went away): then nobody
            # was told a deny, and the records are written as they would have been.
            return
        with writer._cond:
            if self.finished or self.taken:
                return  # done, or being written: the write decides (see `wait`)
            self.cancelled = True
            self.error = f"the audit log did not confirm the write within {timeout} s"
        self._future.set_result(None)  # not done (above), and only this thread resolves it

    def _finish(self, ok: bool, error: str = "", woken: list[Ticket] | None = None) -> None:
        """Done: stored (`ok`) or not. Once per ticket; later calls change nothing.

        An awaited ticket is added to `woken` when given (the caller wakes its loop once
        for all of them), else its loop is woken now.
        """
        writer = self._writer
        assert writer is not None
        with writer._cond:
            if self.finished:
                return
            self.finished = True
            self.ok, self.error = ok, error
            if self.lead:
                self.lead = False  # released to lead, not picked up yet: that release stands
            else:
                self._lock.release()
        if self._future is not None:
            if woken is None:
                _wake([self])
            else:
                woken.append(self)

    def _promote(self) -> bool:
        """Wake the caller to write the next batch (under the writer's lock)."""
        if self.finished or self.cancelled or self._future is not None:
            return False
        self.lead = True
        self._lock.release()
        return True


_DONE = Ticket(done=True)  # what buffered calls get: nothing to wait for


def _wake(tickets: Sequence[Ticket]) -> None:
    """Resolve awaited tickets' futures on their loops: one hand-off per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for t in tickets:
        if t._future is not None:
            by_loop.setdefault(t._future.get_loop(), []).append(t._future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve(futures: Sequence[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


class _Deadlines:
    """The time-outs of the tickets awaited on one event loop, with one timer for all.

    A timer per call (`asyncio.timeout`) took 4.2 µs of the loop's thread per durable
    call (measured), and nearly every ticket is done long before its time-out. So the
    deadlines wait in a heap, done tickets leave it as new ones come, and one timer is
    set for the earliest. Used on the loop's thread only.
    """

    __slots__ = ("_loop", "_owner", "_heap", "_count", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: dict[asyncio.AbstractEventLoop, _Deadlines],
    ) -> None:
        self._loop = loop
        self._owner = owner  # the writer's, by loop: left when empty, so no loop is kept
        self._heap: list[tuple[float, int, Ticket, float]] = []
        self._count = itertools.count()  # ties in the heap: never compare tickets
        self._timer: asyncio.TimerHandle | None = None

    def add(self, ticket: Ticket, timeout: float) -> None:
        """Expire `ticket` in `timeout` seconds unless it is done by then."""
        heap = self._heap
        while heap and heap[0][2].finished:
            heapq.heappop(heap)
        deadline = self._loop.time() + timeout
        heapq.heappush(heap, (deadline, next(self._count), ticket, timeout))
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()
        while heap:
            deadline, _, ticket, timeout = heap[0]
            if deadline > now and not ticket.finished:
                self._timer = self._loop.call_at(deadline, self._fire)
                return
            heapq.heappop(heap)
            if not ticket.finished:
                ticket._expire(timeout)
        if self._owner.get(self._loop) is self:
            del self._owner[self._loop]


class AuditWriter:
    """One writer per sink and chain; `submit` is thread-safe.

    `on_health(healthy, reason)` is called when the sink starts or stops working
    (for the server's health status), on whichever thread noticed.
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
        self._queue: deque[Item] = deque()
        self._pending = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        # INVARIANT: only the thread that set `_writing` (a durable leader, or the
        # background thread) touches the sink and the chain state below.
        self._writing = False
        self._seq = 0
        self._prev = GENESIS
        self._opened = False
        # Counters (changed under _cond; read without it for stats).
        self._written = self._lost = self._rejected = self._sampled_out = self._batches = 0
        self._healthy = True
        self._losing = False  # buffered: the buffer is full and records are being dropped
        self._last_error = ""
        self._retry_at = 0.0  # monotonic time of the next attempt while failing
        self._flush_at = 0.0  # buffered: monotonic time the queue is written at the latest
        self._deadlines: dict[asyncio.AbstractEventLoop, _Deadlines] = {}  # see wait_async

    # --- the request side -----------------------------------------------------------------

    def start(self) -> None:
        """Open the chain (continuing from the sink's last record) and start the thread.

        A sink that cannot be opened now is not fatal: the writer is unhealthy (durable
        calls are refused) and the background thread retries.
        """
        self._try_open()
        self._thread = threading.Thread(target=self._run, name="pdp-audit-writer", daemon=True)
        self._thread.start()

    def submit(
        self, records: Sequence[Submitted], loop: asyncio.AbstractEventLoop | None = None
    ) -> Ticket:
        """Queue the records (or drafts) of one call, in decision order; see the modes above.

        Durable: the records are written by the time `Ticket.wait` returns True (when
        no write was in progress, they are written before `submit` returns). With `loop`
        (the caller's event loop) `submit` never writes: await `Ticket.wait_async`.
        """
        if self.sample_allowed < 1.0:
            kept = [r for r in records if not r.allowed or self._sampled(r.decision_id)]
            if len(kept) != len(records):
                with self._cond:
                    self._sampled_out += len(records) - len(kept)
                records = kept
        if not records:
            return _DONE
        if self.mode == "buffered":
            self._submit_buffered(records)
            return _DONE
        ticket = Ticket(self, loop=loop)
        with self._cond:
            refusal = self._refusal()
            if refusal is None:
                self._queue.append((records, ticket))
                self._pending += len(records)
                if self._writing:
                    return ticket  # the writer in progress, or the next leader, takes it
                if loop is not None:
                    self._cond.notify_all()  # the background thread writes it
                    return ticket
                self._writing = True
            else:
                self._rejected += len(records)
        if refusal is not None:
            ticket._finish(False, refusal)
            return ticket
        self._lead()
        return ticket

    def _deadlines_of(self, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        """The time-outs of the tickets awaited on `loop` (made on its first ticket)."""
        deadlines = self._deadlines.get(loop)
        if deadlines is None:
            deadlines = self._deadlines.setdefault(loop, _Deadlines(loop, self._deadlines))
        return deadlines

    def _refusal(self) -> str | None:
        """Why a durable call is refused at once (under the lock), or None."""
        if self._closing:
            return "the audit log is closed (the server is stopping)"
        if not self._healthy and time.monotonic() < self._retry_at:
            # Deny at once rather than keep callers waiting for the next attempt.
            return f"the audit log is failing: {self._last_error}"
        return None

    def _submit_buffered(self, records: Sequence[Submitted]) -> None:
        with self._cond:
            if self._closing:
                self._lost += len(records)
                return
            if self._pending + len(records) > self.buffer_limit:
                self._lost += len(records)
                # Logged when an episode starts (the buffer had room since the last loss),
                # then every 10,000 records: loud enough, and never silent.
                first, self._losing = not self._losing, True
                if first or self._lost % 10_000 < len(records):
                    log.error(
                        "audit buffer full (%d records): %d records lost so far; %s",
                        self.buffer_limit,
                        self._lost,
                        self._last_error or "the sink is too slow",
                    )
                return
            self._losing = False
            was_empty = not self._queue
            self._queue.append((records, _DONE))
            self._pending += len(records)
            # Wake the writer to start the flush clock, or when a batch is full.
            if was_empty or self._pending >= self.max_batch:
                self._cond.notify_all()

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
            self._cond.notify_all()
        self._deadlines.clear()  # their timers still end what they wait for; no loop is kept
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("audit writer did not finish within %.1f s", timeout)
        with self._cond:
            # A durable leader may be finishing its last batch: let it, then close.
            deadline = time.monotonic() + timeout
            while self._writing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            left = list(self._queue)
            self._queue.clear()
            self._pending = 0
        self._give_up_all(left, "the audit log was closed before they were written")
        try:
            self.sink.close()
        except Exception:
            log.exception("closing the audit sink failed")

    # --- durable: leaders ----------------------------------------------------------------

    def _lead(self) -> None:
        """Write one batch from the head of the queue, then pass the lead on.

        INVARIANT: called with `_writing` set by (or for) this thread.
        """
        with self._cond:
            batch = self._take()
            refusal = self._refusal() if not self._closing else None
        try:
            if batch and refusal is not None:
                # The sink failed a moment ago (the batch before this one): do not try
                # again before `retry_interval`, deny these callers now.
                self._give_up_all(batch, refusal)
            elif batch:
                if not self._opened and not self._try_open():
                    self._failed(batch)
                else:
                    self._write(batch)
        except Exception as exc:  # a bug of ours: fail these calls, never stall the next
            log.exception("audit writer failed")
            self._last_error = f"internal error in the audit writer ({type(exc).__name__})"
            self._opened = False
            self._give_up_all(batch, self._last_error)
        with self._cond:
            # The first caller still waiting writes the next batch for all that queued.
            while self._queue and not self._closing:
                records, ticket = self._queue[0]
                if ticket._promote():
                    return
                if ticket._future is not None and not (ticket.finished or ticket.cancelled):
                    break  # awaited on a loop: the background thread writes it
                self._queue.popleft()  # gave up waiting: it denied, so no record
                self._pending -= len(records)
                self._rejected += len(records)
            self._writing = False
            # close() may be waiting for the last write; the background thread for work.
            self._cond.notify_all()

    # --- buffered, probing, closing: the background thread -------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._wait_time())
                if self._closing and not self._queue:
                    return
                if self._writing:
                    continue  # a durable leader is at it
                self._writing = True
                # Durable: what calls awaiting on an event loop queued (threads lead).
                batch = self._take()
            try:
                if not self._opened and not self._try_open():
                    self._failed(batch)
                elif batch:
                    self._write(batch)
                else:  # a successful probe of a sink that had failed
                    self._set_health(True, "")
            except Exception as exc:  # a bug of ours: count the loss, keep the thread
                log.exception("audit writer failed")
                self._last_error = f"internal error in the audit writer ({type(exc).__name__})"
                self._opened = False
                self._give_up_all(batch, self._last_error)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _due(self) -> bool:
        """Whether the background thread has something to do now (under the lock)."""
        if self._closing:
            return not self._writing
        now = time.monotonic()
        if self.mode == "durable":
            # Leaders write for threads that wait; calls awaiting on a loop cannot lead,
            # so what they queue is written here (while failing: as the next probe).
            if self._writing:
                return False
            return now >= self._retry_at if not self._healthy else bool(self._queue)
        if not self._healthy and now >= self._retry_at:
            return not self._writing
        if not self._queue or not self._healthy:
            return False
        return self._pending >= self.max_batch or now >= self._flush_at

    def _wait_time(self) -> float | None:
        now = time.monotonic()
        if self._closing or self._writing:
            return 0.05  # a durable leader is finishing; look again soon
        if not self._healthy:
            return max(0.0, self._retry_at - now) + 0.001
        if self._queue and self.mode == "buffered":
            return max(0.0, self._flush_at - now) + 0.001
        return None

    # --- writing (by whichever thread holds `_writing`) ----------------------------------

    def _take(self) -> list[Item]:
        """Up to `max_batch` records from the front of the queue (under the lock)."""
        batch: list[Item] = []
        n = 0
        while self._queue and (n == 0 or n + len(self._queue[0][0]) <= self.max_batch):
            records, ticket = self._queue.popleft()
            self._pending -= len(records)
            if ticket.cancelled:
                # The caller gave up waiting and denied: do not record what it never said.
                self._rejected += len(records)
                continue
            ticket.taken = True  # from here on the write decides (harmless on the shared `_DONE`)
            batch.append((records, ticket))
            n += len(records)
        return batch

    def _write(self, batch: list[Item]) -> None:
        sealed = SealedBatch()
        lines: list[str] = []
        seq, prev = self._seq, self._prev
        chain = self.chain
        for records, _ in batch:
            for r in records:
                seq += 1
                if isinstance(r, RecordDraft):
                    fields, line, prev = seal_draft(r, chain, seq, prev)
                    sealed.append(fields)
                else:
                    record, line = seal(r, chain, seq, prev)
                    prev = record.hash
                    sealed.append(record)
                lines.append(line)
        try:
            self.sink.write_batch(sealed, lines)
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._opened = False  # re-read the head: the sink may hold part of the batch
            self._failed(batch)
            return
        self._seq, self._prev = seq, prev
        if not self._healthy:
            self._set_health(True, "")
        # One round on the lock for the counters and every ticket (`_finish` re-enters
        # it cheaply): under load each extra round is a contended lock and a GIL hand-off.
        woken: list[Ticket] = []
        with self._cond:
            self._written += len(sealed)
            self._batches += 1
            self._flush_at = time.monotonic() + self.flush_interval
            for _, ticket in batch:
                if ticket is not _DONE:  # buffered calls share one finished ticket
                    ticket._finish(True, woken=woken)
        if woken:
            _wake(woken)

    def _failed(self, batch: list[Item]) -> None:
        self._set_health(False, self._last_error)
        with self._cond:
            self._retry_at = time.monotonic() + self.retry_interval
            if self.mode == "buffered" and not self._closing:
                # Keep them for the next try, in order, ahead of what came since.
                for item in reversed(batch):
                    self._queue.appendleft(item)
                    self._pending += len(item[0])
                return
        self._give_up_all(batch, self._last_error)

    def _give_up_all(self, items: Sequence[Item], why: str) -> None:
        """Fail durable callers (they deny); count buffered records as lost, and say so."""
        lost = 0
        for records, ticket in items:
            if ticket is _DONE:
                lost += len(records)
            else:
                with self._cond:
                    self._rejected += len(records)
                ticket._finish(False, why)
        if lost:
            with self._cond:
                self._lost += lost
            log.error("audit: %d records could not be written: %s", lost, why)

    def _try_open(self) -> bool:
        try:
            head = self.sink.head(self.chain)
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._set_health(False, self._last_error)
            with self._cond:
                self._retry_at = time.monotonic() + self.retry_interval
            return False
        self._seq, self._prev = (head.seq, head.hash) if head else (0, GENESIS)
        self._opened = True
        return True

    def _set_health(self, healthy: bool, reason: str) -> None:
        with self._cond:
            if healthy == self._healthy:
                return
            self._healthy = healthy
            if not healthy:
                self._cond.notify_all()  # the background thread starts probing
        if healthy:
            log.info("audit log writable again (%s)", self.chain)
        else:
            log.error("audit log failing: %s", reason)
        if self.on_health is not None:
            try:
                self.on_health(healthy, reason)
            except Exception:
                log.exception("audit health listener failed")
