"""The JSON Lines sink: durable batches, rotation by size and time, crash repair, one writer."""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pdp.audit.jsonl import (
    JsonlSink,
    Segment,
    head_path,
    read_blocks,
    read_lines,
    safe_chain,
    segments,
)
from pdp.audit.query import Filter
from pdp.audit.read import JsonlSource
from pdp.audit.record import GENESIS, parse_line, seal
from pdp.audit.sink import SinkError
from pdp.audit.verify import verify
from pdp.audit.writer import AuditWriter
from tests.audit.support import T0, record, write_log


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_records_are_appended_one_per_line(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(5)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.head", "host.jsonl", "host.lock"]
    lines = lines_of(tmp_path / "host.jsonl")
    assert [parse_line(x)[0].seq for x in lines] == [1, 2, 3, 4, 5]


def test_rotation_by_size_keeps_the_chain_across_files(tmp_path: Path) -> None:
    w = AuditWriter(JsonlSink(tmp_path, max_bytes=3000), chain="host")
    w.start()
    for i in range(20):
        assert w.submit([record(i)]).wait(5)
    w.close()
    segs = segments(tmp_path)["host"]
    assert len(segs) > 3
    assert segs[-1].path.name == "host.jsonl" and segs[-1].first_seq is None
    # Closed segments are named by their first seq, and sorting by name is chain order.
    firsts = [s.first_seq for s in segs[:-1]]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for seg in segs[:-1]:
        assert seg.path.stat().st_size <= 3000
        assert parse_line(lines_of(seg.path)[0])[0].seq == seg.first_seq
    seqs = [parse_line(x)[0].seq for s in segs for x in lines_of(s.path)]
    assert seqs == list(range(1, 21))
    report = verify(JsonlSource(tmp_path))
    assert report.ok and report.chains[0].checked == 20


def test_a_rotation_that_fails_halfway_does_not_wedge_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory sync once the new segment is open fails (an I/O error): that call
    # is denied, and the next ones are written to the new segment, not refused for good.
    import pdp.audit.jsonl as jsonl

    real, failed = jsonl._fsync_dir, []

    def flaky(path: Path) -> None:
        active = path / "host.jsonl"
        rotated = list(path.glob("host.0*.jsonl")) and active.exists()
        if not failed and rotated and active.stat().st_size == 0:
            failed.append(path)
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(jsonl, "_fsync_dir", flaky)
    sink = JsonlSink(tmp_path, max_bytes=3000)
    w = AuditWriter(sink, chain="host", retry_interval=0.0)
    w.start()
    answers = [w.submit([record(i)]).wait(5) for i in range(20)]
    w.close()
    assert failed and answers.count(False) == 1, answers
    assert answers.index(False) > 0 and all(answers[answers.index(False) + 1 :])
    report = verify(JsonlSource(tmp_path))
    assert report.ok and report.chains[0].checked == 19
    assert len(segments(tmp_path)["host"]) > 2


def test_an_empty_head_file_left_by_a_crash_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = AuditWriter(JsonlSink(tmp_path), chain="host")
    w.start()
    assert all(w.submit([record(i)]).wait(5) for i in range(3))
    w.close()
    head_path(tmp_path, "host").write_bytes(b"")  # created, its first write lost
    w = AuditWriter(JsonlSink(tmp_path), chain="host")
    with caplog.at_level(logging.WARNING, logger="pdp.audit"):
        w.start()
    assert w.healthy and w.submit([record(3)]).wait(5)
    w.close()
    assert "head file of chain `host` is empty" in caplog.text
    report = verify(JsonlSource(tmp_path))
    assert report.ok and report.chains[0].checked == 4


def test_rotation_by_time(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, rotate_seconds=3600)
    w = AuditWriter(sink, chain="host")
    w.start()
    hours = [0, 0, 1, 1, 1, 3]
    for i, h in enumerate(hours):
        assert w.submit([record(i, at=T0 + timedelta(hours=h, minutes=i))]).wait(5)
    w.close()
    segs = segments(tmp_path)["host"]
    assert [s.first_seq for s in segs] == [1, 3, None]
    assert [len(lines_of(s.path)) for s in segs] == [2, 3, 1]


def test_a_restarted_writer_continues_from_the_last_closed_segment(tmp_path: Path) -> None:
    w = AuditWriter(JsonlSink(tmp_path, max_bytes=1), chain="host")  # every batch rotates
    w.start()
    for i in range(3):
        assert w.submit([record(i)]).wait(5)
    w.close()
    # A crash between rotating (the rename) and creating the new open segment.
    (tmp_path / "host.jsonl").rename(tmp_path / "host.000000000003.jsonl")
    write_log(tmp_path, [record(3)])
    segs = segments(tmp_path)["host"]
    assert [s.first_seq for s in segs] == [1, 2, 3, None]
    assert parse_line(lines_of(tmp_path / "host.jsonl")[0])[0].seq == 4
    report = verify(JsonlSource(tmp_path))
    assert report.ok and report.chains[0].last_seq == 4


def test_a_half_written_last_line_is_cut_when_the_chain_reopens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_log(tmp_path, [record(i) for i in range(3)])
    active = tmp_path / "host.jsonl"
    _, partial = seal(record(3), "host", 4, "x" * 64)
    with open(active, "a", encoding="utf-8") as f:
        f.write(partial[:100])  # killed in the middle of a write: never acknowledged
    # Readers skip the unfinished line rather than call it corrupt.
    assert not JsonlSource(tmp_path).search(Filter(), 10).problems
    write_log(tmp_path, [record(4)])
    assert "removing 100 bytes" in caplog.text
    seqs = [parse_line(x)[0].seq for x in lines_of(active)]
    assert seqs == [1, 2, 3, 4]
    assert verify(JsonlSource(tmp_path)).ok


def test_one_writer_per_chain(tmp_path: Path) -> None:
    first = JsonlSink(tmp_path)
    assert first.head("host") is None
    second = JsonlSink(tmp_path)
    with pytest.raises(SinkError, match="being written by another process"):
        second.head("host")
    assert JsonlSink(tmp_path).head("other") is None  # another chain is fine
    first.close()
    assert second.head("host") is None  # free again


def test_a_failed_write_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = JsonlSink(tmp_path)
    assert sink.head("host") is None
    r1, l1 = seal(record(1), "host", 1, GENESIS)
    sink.write_batch([r1], [l1])
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:50])  # a short write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", flaky)
    r2, l2 = seal(record(2), "host", 2, r1.hash)
    with pytest.raises(SinkError, match="no space left on the device"):
        sink.write_batch([r2], [l2])
    monkeypatch.setattr(os, "write", real_write)
    assert lines_of(tmp_path / "host.jsonl") == [l1]
    assert sink.head("host") is not None
    sink.write_batch([r2], [l2])
    sink.close()
    assert verify(JsonlSource(tmp_path)).ok


def test_a_corrupt_last_record_stops_the_chain_from_continuing(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(2)])
    with open(tmp_path / "host.jsonl", "a", encoding="utf-8") as f:
        f.write("garbage\n")
    with pytest.raises(SinkError, match="last record is not valid"):
        JsonlSink(tmp_path).head("host")


def test_chain_names() -> None:
    assert safe_chain("pdp-1.prod.example.com") == "pdp-1-prod-example-com"
    assert safe_chain("...") == "pdp"
    with pytest.raises(ValueError, match="not a chain name"):
        JsonlSink("x").head("a.b")


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"one\n",
        b"one\ntwo\nthree\n",
        b"one\ntwo\nunfinished",
        b"unfinished",
        b"a\r\n\nlonger line here\nb\n",
        b"\n\n",
    ],
)
def test_reading_lines_backwards(tmp_path: Path, content: bytes, block: int) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    forward = [(n, raw.encode()) for n, raw in read_lines(path)]
    for reverse in (False, True):
        got = []
        for first, data in read_blocks(path, reverse=reverse, size=block):
            assert data.endswith(b"\n")
            lines = data.split(b"\n")[:-1]
            got += [(first + i, x.rstrip(b"\r")) for i, x in enumerate(lines)]
        if reverse:
            # Blocks come last first; lines inside a block stay in file order.
            got.sort()
        assert got == forward


def test_following_a_chain_across_rotations(tmp_path: Path) -> None:
    import threading

    from pdp.audit.query import make_filter

    write_log(tmp_path, [record(0)])
    stop = threading.Event()
    got: list[str] = []
    follower = JsonlSource(tmp_path).follow(make_filter(), stop.is_set, poll=0.01)

    def consume() -> None:
        for item in follower:
            got.append(getattr(item, "decision_id", str(item)))

    t = threading.Thread(target=consume)
    t.start()
    try:
        w = AuditWriter(JsonlSink(tmp_path, max_bytes=2500), chain="host")
        w.start()
        for i in range(1, 9):
            assert w.submit([record(i)]).wait(5)
            time.sleep(0.02)
        w.close()
        want = [f"d-{i:05d}" for i in range(1, 9)]
        deadline = time.monotonic() + 5
        while got != want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == want
        assert len(segments(tmp_path)["host"]) > 2  # it did rotate while we followed
    finally:
        stop.set()
        t.join(5)


def test_following_reads_each_record_once_when_its_listing_predates_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower lists the segments, then the writer rotates, then the follower
    # looks at its file: the listing it holds does not name the renamed file yet.
    from pdp.audit.query import make_filter

    w = AuditWriter(JsonlSink(tmp_path, max_bytes=2500), chain="host")
    w.start()
    assert w.submit([record(0)]).wait(5)
    source = JsonlSource(tmp_path)
    stale = source._segments()
    calls = iter(range(1_000_000))
    real = JsonlSource._segments

    def listing(self: JsonlSource) -> dict[str, list[Segment]]:
        return stale if next(calls) == 1 else real(self)  # the first poll's listing

    monkeypatch.setattr(JsonlSource, "_segments", listing)
    polls = iter(range(4))
    follower = source.follow(make_filter(), lambda: next(polls, 3) >= 3, poll=0)
    for i in range(1, 9):  # rotates: about 3 records per segment
        assert w.submit([record(i)]).wait(5)
    w.close()
    got = [getattr(item, "decision_id", str(item)) for item in follower]
    assert got == [f"d-{i:05d}" for i in range(1, 9)]


def test_a_failed_head_keeps_the_chain_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = JsonlSink(tmp_path)
    assert sink.head("host") is None

    def unreadable(self: JsonlSink) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(JsonlSink, "_find_head", unreadable)
    with pytest.raises(SinkError, match="Input/output error"):
        sink.head("host")
    monkeypatch.undo()
    # Meanwhile no other writer may take the chain.
    with pytest.raises(SinkError, match="being written by another process"):
        JsonlSink(tmp_path).head("host")
    assert sink.head("host") is None  # and the first one carries on
    sink.close()
    other = JsonlSink(tmp_path)
    assert other.head("host") is None
    other.close()
