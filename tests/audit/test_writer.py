"""The background writer: group commit, the chain in commit order, both modes, sampling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import fields as dataclass_fields

import pytest

from pdp.audit.record import GENESIS, AuditConfig, DecisionRecord, RecordDraft, seal
from pdp.audit.recorder import Recorder
from pdp.audit.sink import MemorySink
from pdp.audit.writer import AuditWriter, SealedBatch, Ticket
from pdp.engine.decide import decide
from tests.audit.support import T0, policy, record, req, us, wait_for

RECORDS = [record(i) for i in range(40)]


class SlowSink(MemorySink):
    """A MemorySink whose writes take `delay` seconds, or wait for `gate` when set."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.gate: threading.Event | None = None
        self.writing = threading.Event()

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        self.writing.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        super().write_batch(records, lines)


@contextlib.contextmanager
def a_write_hangs() -> Iterator[tuple[AuditWriter, SlowSink]]:
    """A durable writer whose write of RECORDS[0], led by a thread, hangs until the
    block ends; then the writer is closed."""
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink)
    leader = threading.Thread(target=lambda: w.submit([RECORDS[0]]).wait(10))
    leader.start()
    assert sink.writing.wait(5)
    try:
        yield w, sink
    finally:
        sink.gate.set()
        leader.join(5)
        w.close()


def linked(records: Sequence[DecisionRecord], start: int = 1) -> bool:
    prev = records[0].prev if start > 1 else GENESIS
    for i, r in enumerate(records):
        if r.seq != start + i or r.prev != prev:
            return False
        prev = r.hash
    return True


def writer(sink: MemorySink, **kw: object) -> AuditWriter:
    w = AuditWriter(sink, chain="host", **kw)  # type: ignore[arg-type]
    w.start()
    return w


def test_durable_answers_after_the_write_and_chains_in_commit_order() -> None:
    sink = MemorySink()
    w = writer(sink)
    for r in RECORDS[:5]:
        ticket = w.submit([r])
        assert ticket.wait(5)
        assert sink.records[-1].decision_id == r.decision_id  # stored before the answer
    w.close()
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:5]]
    assert linked(sink.records)
    assert sink.snapshot() == sink.records  # what a reader parses is what was sealed
    assert w.stats().written == 5 and sink.closed


def test_group_commit_shares_one_write_among_concurrent_calls() -> None:
    sink = SlowSink(delay=0.01)  # a slow fsync
    w = writer(sink)
    results: list[bool] = []

    def caller(k: int) -> None:
        for j in range(10):
            results.append(w.submit([record(k * 10 + j)]).wait(10))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert results == [True] * 80
    assert len(sink.records) == 80 and linked(sink.records)
    # Calls that arrived during a write went into the next batch together.
    assert sink.batches <= 30, sink.batches


def test_records_of_one_call_stay_together_and_in_order() -> None:
    sink = MemorySink()
    w = writer(sink)
    assert w.submit(RECORDS[:7]).wait(5)
    w.close()
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:7]]
    assert sink.batches == 1


def test_a_new_writer_continues_the_chain_where_the_sink_ends() -> None:
    sink = MemorySink()
    w = writer(sink)
    assert w.submit(RECORDS[:3]).wait(5)
    w.close()
    w2 = writer(sink)
    assert w2.submit(RECORDS[3:5]).wait(5)
    w2.close()
    assert [r.seq for r in sink.records] == [1, 2, 3, 4, 5]
    assert linked(sink.records)


def test_buffered_answers_at_once_and_writes_within_the_interval() -> None:
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink, mode="buffered", flush_interval=0.2)
    started = time.monotonic()
    for r in RECORDS[:20]:
        assert w.submit([r]).wait(0)  # returns at once, even while the sink is stuck
    assert time.monotonic() - started < 0.5
    sink.gate.set()
    wait_for(lambda: len(sink.records) == 20, timeout=5, what="the buffered records")
    w.close()
    assert linked(sink.records)
    assert sink.batches < 20  # batched, not one write per record


def test_buffered_keeps_records_while_the_sink_fails_and_writes_them_when_it_heals() -> None:
    sink = MemorySink()
    sink.fail_with = OSError("disk unplugged")
    health: list[bool] = []
    w = writer(
        sink,
        mode="buffered",
        flush_interval=0.01,
        retry_interval=0.05,
        on_health=lambda ok, why: health.append(ok),
    )
    for r in RECORDS[:10]:
        w.submit([r])
    wait_for(lambda: not w.healthy, what="the failure to be noticed")
    stats = w.stats()
    assert stats.pending == 10 and stats.lost == 0 and "disk unplugged" in stats.last_error
    sink.fail_with = None
    wait_for(lambda: len(sink.records) == 10, what="the retried records")
    w.close()
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:10]]
    assert linked(sink.records)
    assert health == [False, True]


def test_buffered_counts_what_it_must_drop(caplog: pytest.LogCaptureFixture) -> None:
    sink = MemorySink()
    sink.fail_with = OSError("read-only file system")
    w = writer(sink, mode="buffered", flush_interval=0.0, buffer_limit=10, retry_interval=30)
    w.submit([RECORDS[0]])
    wait_for(lambda: not w.healthy, what="the failure")
    with caplog.at_level(logging.ERROR, logger="pdp.audit"):
        for r in RECORDS[1:25]:
            w.submit([r])
    stats = w.stats()
    assert (stats.pending, stats.lost, stats.written) == (10, 15, 0)
    assert "records lost" in caplog.text and "read-only file system" in caplog.text
    w.close(timeout=5)
    # Closing tries once more; the sink still fails, so those are lost too: never silent.
    assert w.stats().lost == 25


def test_buffered_logs_every_episode_of_loss(caplog: pytest.LogCaptureFixture) -> None:
    sink = MemorySink()
    sink.fail_with = OSError("disk gone")
    w = writer(sink, mode="buffered", flush_interval=0.0, buffer_limit=3, retry_interval=0.05)
    with caplog.at_level(logging.ERROR, logger="pdp.audit"):
        for r in RECORDS[:5]:
            w.submit([r])
        sink.fail_with = None
        wait_for(lambda: w.stats().written == 3, what="the buffer to be written")
        sink.fail_with = OSError("disk gone again")
        w.submit([RECORDS[5]])
        wait_for(lambda: not w.healthy, what="the second failure")
        for r in RECORDS[6:10]:
            w.submit([r])
    lost = [m for m in caplog.messages if "audit buffer full" in m]
    assert w.stats().lost == 4
    assert len(lost) == 2 and "disk gone again" in lost[1], caplog.messages
    sink.fail_with = None
    w.close()


def test_durable_fails_the_call_when_the_sink_fails_then_recovers() -> None:
    sink = MemorySink()
    health: list[tuple[bool, str]] = []
    w = writer(sink, retry_interval=0.3, on_health=lambda ok, why: health.append((ok, why)))
    assert w.submit([RECORDS[0]]).wait(5)
    sink.fail_with = OSError("no space left on device")
    ticket = w.submit([RECORDS[1]])
    assert not ticket.wait(5)
    assert "no space left" in ticket.error
    assert not w.healthy and health == [(False, "no space left on device")]
    # While failing, calls are refused at once rather than waiting for the next attempt.
    started = time.monotonic()
    fast = w.submit([RECORDS[2]])
    assert not fast.wait(5) and time.monotonic() - started < 0.2
    assert "the audit log is failing" in fast.error
    sink.fail_with = None
    wait_for(lambda: w.healthy, what="the writer to probe the healed sink")
    assert w.submit([RECORDS[3]]).wait(5)
    w.close()
    # Refused records are not in the log, and the chain has no hole.
    assert [r.decision_id for r in sink.records] == [RECORDS[0].decision_id, RECORDS[3].decision_id]
    assert linked(sink.records)
    assert w.stats().rejected == 2 and health[-1] == (True, "")


def test_a_caller_that_gave_up_is_not_recorded() -> None:
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink)
    firsts: list[bool] = []
    # The first call finds no write in progress: it writes itself, and is stuck there.
    leader = threading.Thread(target=lambda: firsts.append(w.submit([RECORDS[0]]).wait(10)))
    leader.start()
    assert sink.writing.wait(5)
    second = w.submit([RECORDS[1]])  # queued behind the write in progress
    assert not second.wait(0.05)  # the server would deny now
    sink.gate.set()
    leader.join(5)
    assert firsts == [True]
    w.close()
    assert [r.decision_id for r in sink.records] == [RECORDS[0].decision_id]
    assert w.stats().rejected == 1


def test_a_caller_whose_record_is_being_written_waits_for_the_write() -> None:
    # Its record is in the batch a promoted caller writes: a time-out now would deny a
    # decision whose record (an allow, with an id) is stored anyway. It waits instead.
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink)
    results: dict[str, bool] = {}
    first = threading.Thread(target=lambda: results.update(a=w.submit([RECORDS[0]]).wait(10)))
    first.start()
    assert sink.writing.wait(5)
    t, u = w.submit([RECORDS[1]]), w.submit([RECORDS[2]])  # queued: t leads them next
    second = threading.Thread(target=lambda: results.update(t=t.wait(10)))
    second.start()
    sink.writing.clear()
    gate, sink.gate = sink.gate, threading.Event()
    gate.set()  # the first write ends; t writes [t, u] and hangs on the new gate
    assert sink.writing.wait(5)
    threading.Timer(0.2, sink.gate.set).start()
    results["u"] = u.wait(0.05)  # times out while its record is being written
    first.join(5)
    second.join(5)
    w.close()
    assert results == {"a": True, "t": True, "u": True} and not u.cancelled
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:3]]
    assert w.stats().rejected == 0


def test_calls_queued_behind_a_write_are_written_by_one_of_them() -> None:
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink)
    results: dict[int, bool] = {}

    def call(i: int) -> None:
        results[i] = w.submit([RECORDS[i]]).wait(10)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert sink.writing.wait(5)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in rest:
        t.start()
    wait_for(lambda: w.stats().pending == 5, what="the queued calls")
    sink.gate.set()
    for t in [first, *rest]:
        t.join(5)
    w.close()
    assert results == dict.fromkeys(range(6), True)
    assert sink.batches == 2  # the first call's, then one for the five that queued
    assert linked(sink.records)


def test_sampling_keeps_every_deny_and_a_stable_share_of_allows() -> None:
    allows = [r for r in (record(i) for i in range(1200)) if r.allowed]
    denies = [r for r in (record(i) for i in range(200)) if not r.allowed]
    assert len(allows) > 600 and denies
    kept: list[set[str]] = []
    for _ in range(2):
        sink = MemorySink()
        w = writer(sink, sample_allowed=0.25)
        for r in allows + denies:
            w.submit([r])
        w.close()
        stored = {r.decision_id for r in sink.records}
        assert {r.decision_id for r in denies} <= stored
        n = len(stored) - len(denies)
        assert 0.15 * len(allows) < n < 0.35 * len(allows)
        assert w.stats().sampled_out == len(allows) - n
        kept.append(stored)
    assert kept[0] == kept[1]  # chosen by decision id: every replica keeps the same


def test_close_flushes_buffered_records_and_refuses_later_ones() -> None:
    sink = MemorySink()
    w = writer(sink, mode="buffered", flush_interval=60)
    w.submit([RECORDS[0]])  # written at once: the first after idle
    w.submit(RECORDS[1:5])
    w.close()
    assert len(sink.records) == 5
    w.submit([RECORDS[5]])
    assert w.stats().lost == 1 and len(sink.records) == 5


def test_durable_submit_after_close_is_refused() -> None:
    w = writer(MemorySink())
    w.close()
    t = w.submit([RECORDS[0]])
    assert not t.wait(1) and "closed" in t.error


def test_a_sink_that_cannot_open_makes_the_writer_unhealthy_not_crash() -> None:
    class Broken(MemorySink):
        def head(self, chain: str) -> None:
            raise OSError("permission denied")

    w = AuditWriter(Broken(), chain="host", retry_interval=0.05)
    w.start()
    assert not w.healthy
    t = w.submit([RECORDS[0]])
    assert not t.wait(5) and "permission denied" in t.error
    w.close()


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="mode"):
        AuditWriter(MemorySink(), chain="h", mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_allowed"):
        AuditWriter(MemorySink(), chain="h", sample_allowed=1.5)
    with pytest.raises(ValueError, match="not a chain name"):
        AuditWriter(MemorySink(), chain="a/b")


def test_a_bug_in_writing_fails_those_calls_and_stalls_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Buggy(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.bugs = 1

        def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
            if self.bugs:
                self.bugs -= 1
                raise KeyError("oops")  # not an I/O error: a bug
            super().write_batch(records, lines)

    sink = Buggy()
    w = writer(sink, retry_interval=0.01)
    first = w.submit([RECORDS[0]])
    assert not first.wait(5) and "oops" in first.error
    wait_for(lambda: w.healthy, what="the writer to recover")
    assert w.submit([RECORDS[1]]).wait(5)
    w.close()
    assert [r.decision_id for r in sink.records] == [RECORDS[1].decision_id]
    assert linked(sink.records)


# --- calls awaiting on an event loop (the server's usual path) ----------------------------


async def _await_all(w: AuditWriter, batches: Sequence[Sequence[DecisionRecord]]) -> list[bool]:
    loop = asyncio.get_running_loop()
    tickets = [w.submit(list(rs), loop) for rs in batches]
    return list(await asyncio.gather(*(t.wait_async(5) for t in tickets)))


def test_durable_calls_on_a_loop_await_their_records_without_leading() -> None:
    sink = SlowSink(delay=0.05)
    w = writer(sink)
    main = threading.current_thread()
    writers: list[threading.Thread] = []
    original = sink.write_batch

    def spy(records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        writers.append(threading.current_thread())
        original(records, lines)

    sink.write_batch = spy  # type: ignore[method-assign]
    results = asyncio.run(_await_all(w, [[r] for r in RECORDS[:10]]))
    w.close()
    assert results == [True] * 10
    # Every write happened on the writer's own thread, never on the loop's.
    assert writers and all(t is not main for t in writers)
    # Calls queued during a write shared the next one: fewer writes than calls.
    assert sink.batches < 10
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:10]]
    assert linked(sink.records)


def test_a_failing_sink_fails_awaited_calls_and_they_learn_why() -> None:
    sink = MemorySink()
    w = writer(sink, retry_interval=0.3)
    sink.fail_with = OSError("disk is gone")
    first = asyncio.run(_await_all(w, [[RECORDS[0]]]))
    assert first == [False]

    # While failing, the refusal is at once and says so.
    async def refused() -> tuple[bool, str, float]:
        started = time.monotonic()
        t = w.submit([RECORDS[1]], asyncio.get_running_loop())
        ok = await t.wait_async(5)
        return ok, t.error, time.monotonic() - started

    ok, error, took = asyncio.run(refused())
    assert not ok and "the audit log is failing" in error and took < 0.2
    sink.fail_with = None
    wait_for(lambda: w.healthy, what="the writer to probe the healed sink")
    assert asyncio.run(_await_all(w, [[RECORDS[2]]])) == [True]
    w.close()
    assert [r.decision_id for r in sink.records] == [RECORDS[2].decision_id]
    assert w.stats().rejected == 2


def test_an_awaited_call_that_times_out_is_not_recorded() -> None:
    # A thread leads a write that hangs; a loop call queues behind it and gives up.
    with a_write_hangs() as (w, sink):

        async def gives_up() -> tuple[bool, str]:
            t = w.submit([RECORDS[1]], asyncio.get_running_loop())
            return await t.wait_async(0.05), t.error

        ok, error = asyncio.run(gives_up())
    assert not ok and "did not confirm the write within 0.05 s" in error
    assert [r.decision_id for r in sink.records] == [RECORDS[0].decision_id]
    assert w.stats().rejected == 1


def test_awaited_calls_time_out_each_at_its_own_deadline() -> None:
    with a_write_hangs() as (w, sink):  # the calls below queue behind the hung write

        async def calls() -> list[tuple[float, bool]]:
            loop = asyncio.get_running_loop()
            started = time.monotonic()

            async def call(i: int, timeout: float) -> tuple[float, bool]:
                ok = await w.submit([RECORDS[i]], loop).wait_async(timeout)
                return time.monotonic() - started, ok

            # Later calls with shorter time-outs must not wait for the earlier deadlines.
            return await asyncio.gather(call(1, 1.5), call(2, 0.5), call(3, 0.05))

        (t1, ok1), (t2, ok2), (t3, ok3) = asyncio.run(calls())
    assert not (ok1 or ok2 or ok3)
    assert 0.05 <= t3 < 0.5 <= t2 < 1.5 <= t1 < 5.0
    assert [r.decision_id for r in sink.records] == [RECORDS[0].decision_id]
    assert w.stats().rejected == 3


def test_an_awaited_call_answered_in_time_is_not_timed_out_later() -> None:
    sink = MemorySink()
    w = writer(sink)

    async def calls() -> list[bool]:
        loop = asyncio.get_running_loop()
        first = w.submit([RECORDS[1]], loop)
        oks = [await first.wait_async(0.1)]
        await asyncio.sleep(0.2)  # past the first deadline: its timer must change nothing
        oks.append(await w.submit([RECORDS[2]], loop).wait_async(0.1))
        oks.append(first.ok and not first.cancelled and first.error == "")
        return oks

    assert asyncio.run(calls()) == [True, True, True]
    w.close()
    assert len(sink.records) == 2 and w.stats().rejected == 0


def test_a_call_cancelled_while_awaiting_its_record_still_has_it_written() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    with a_write_hangs() as (w, sink):

        async def client_goes_away() -> None:
            loops.append(weakref.ref(asyncio.get_running_loop()))
            ticket = w.submit([RECORDS[1]], asyncio.get_running_loop())
            call = asyncio.ensure_future(ticket.wait_async(0.1))
            await asyncio.sleep(0.02)
            call.cancel()  # what gRPC does to the handler when the client cancels
            await asyncio.sleep(0.3)  # past the time-out the call would have had

        asyncio.run(client_goes_away())
    # Nobody was told a deny, so the record is kept, as for any call once queued.
    assert [r.decision_id for r in sink.records] == [r.decision_id for r in RECORDS[:2]]
    assert w.stats().rejected == 0
    gc.collect()
    assert loops[0]() is None  # the writer keeps no loop it served


def test_an_awaited_call_whose_record_is_being_written_waits_for_the_write() -> None:
    sink = SlowSink()
    sink.gate = threading.Event()
    w = writer(sink)

    async def call() -> tuple[bool, str]:
        t = w.submit([RECORDS[1]], asyncio.get_running_loop())
        # The background thread has taken the record and is writing it, for 0.2 s.
        assert await asyncio.to_thread(sink.writing.wait, 5)
        threading.Timer(0.2, sink.gate.set).start()
        return await t.wait_async(0.05), t.error

    started = time.monotonic()
    ok, error = asyncio.run(call())
    assert (ok, error) == (True, "") and time.monotonic() - started >= 0.2
    w.close()
    assert [r.decision_id for r in sink.records] == [RECORDS[1].decision_id]
    assert w.stats().rejected == 0


def test_threads_and_loop_calls_share_one_chain() -> None:
    sink = SlowSink(delay=0.01)
    w = writer(sink)
    done: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: done.append(w.submit([RECORDS[i]]).wait(10)))
        for i in range(20, 30)
    ]
    for t in threads:
        t.start()
    awaited = asyncio.run(_await_all(w, [[r] for r in RECORDS[:10]]))
    for t in threads:
        t.join(10)
    w.close()
    assert awaited == [True] * 10 and done == [True] * 10
    assert sorted(r.decision_id for r in sink.records) == sorted(
        r.decision_id for r in RECORDS[:10] + RECORDS[20:30]
    )
    assert linked(sink.records)


def test_a_bug_in_the_recorder_is_a_reason_to_deny_never_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = writer(MemorySink())

    def broken(*args: object) -> Ticket:
        raise KeyError("a bug")

    w.submit = broken  # type: ignore[method-assign]
    recorder = Recorder(w, AuditConfig())
    with caplog.at_level(logging.ERROR, logger="pdp.audit"):
        assert recorder.record([RECORDS[0]]) == "internal error in the audit log (KeyError)"
        awaited = asyncio.run(recorder.record_async([RECORDS[1]]))
    assert awaited == "internal error in the audit log (KeyError)"
    assert caplog.text.count("audit recorder failed") == 2
    w.close()


def test_drafts_are_stored_as_the_records_they_build() -> None:
    sink = MemorySink()
    w = writer(sink)
    ps = policy()
    drafts = [
        RecordDraft(
            decide(ps, req("bob", "read", str(i)), frozenset({"viewer"})),
            req("bob", "read", str(i)),
            {"decision_id": f"d-{i}", "caller": "svc", "latency_us": i, "policy": ps},
        )
        for i in range(4)
    ]
    assert w.submit([RECORDS[0], *drafts[:2]]).wait(5)  # a record and drafts in one call
    assert w.submit(drafts[2:]).wait(5)
    w.close()
    assert linked(sink.records) and sink.snapshot() == sink.records
    assert [r.decision_id for r in sink.records] == ["d-00000", "d-0", "d-1", "d-2", "d-3"]
    built = drafts[3].build()
    record, line = seal(built, "host", 5, sink.records[-2].hash)
    assert sink.records[-1] == record and sink.lines[-1] == line
    assert sink.records[-1].time_us == us(T0)


def test_a_sealed_batch_makes_each_record_once_when_read() -> None:
    sealed = [seal(r, "host", i + 1, "0" * 64)[0] for i, r in enumerate(RECORDS[:3])]
    fields = [tuple(getattr(r, f.name) for f in dataclass_fields(DecisionRecord)) for r in sealed]
    batch = SealedBatch()
    batch.append(sealed[0])
    batch.append(fields[1])
    batch.append(fields[2])
    assert len(batch) == 3 and batch[-1] == sealed[2]
    assert batch[1] is batch[1]  # made once
    assert list(batch) == sealed and batch[1:] == sealed[1:] and batch[::-1] == sealed[::-1]
    with pytest.raises(IndexError):
        batch[3]
