"""The hash chain: a changed, removed or reordered record is found and named."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from pdp.audit.jsonl import JsonlSink
from pdp.audit.query import Filter
from pdp.audit.read import JsonlSource
from pdp.audit.record import canonical, record_hash
from pdp.audit.verify import ChainReport, describe, verify
from pdp.audit.writer import AuditWriter
from tests.audit.support import record, us, wait_for, write_log

N = 12


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """An intact audit directory with N records in chain `host`."""
    d = tmp_path / "log"
    write_log(d, [record(i) for i in range(N)])
    return d


def copy(log: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the log to tamper with, and the lines of its one file."""
    c = tmp_path / "copy"
    shutil.copytree(log, c)
    return c, (c / "host.jsonl").read_text(encoding="utf-8").splitlines()


def save(d: Path, lines: list[str]) -> None:
    (d / "host.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")


def check(d: Path, **kw: object) -> ChainReport:
    report = verify(JsonlSource(d), **kw)  # type: ignore[arg-type]
    assert len(report.chains) == 1
    return report.chains[0]


def test_an_intact_log_verifies(log: Path) -> None:
    c = check(log)
    assert c.ok and c.checked == N and (c.first_seq, c.last_seq) == (1, N)
    assert describe(c).startswith(f"chain host: ok, {N} records, seq 1 to {N}; head ")


def test_an_edited_record(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    assert '"decision":"deny"' in lines[4]
    lines[4] = lines[4].replace('"decision":"deny"', '"decision":"allow"')
    save(d, lines)
    c = check(d)
    assert not c.ok and c.first_break is not None
    assert c.first_break.where.endswith("host.jsonl:5")
    assert c.first_break.seq == 5 and c.first_break.decision_id == "d-00004"
    assert "changed: the record does not match its hash" in c.first_break.message


def test_an_edited_record_with_its_hash_recomputed(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    obj = json.loads(lines[4])
    obj["decision"] = "allow"
    obj["hash"] = record_hash(obj)  # a careful forger, who writes the canonical form too
    body = canonical({k: v for k, v in obj.items() if k != "hash"})
    lines[4] = f'{body[:-1]},"hash":"{obj["hash"]}"}}'
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.seq == 6
    assert c.first_break.where.endswith("host.jsonl:6")
    assert "does not follow the record before it (seq 5)" in c.first_break.message


def test_a_re_encoded_record_is_reported_though_its_content_hashes_the_same(
    log: Path, tmp_path: Path
) -> None:
    # Same content, other bytes (escapes, spaces): it would slip past search and show,
    # which filter on the bytes first, so verify must not accept it.
    d, lines = copy(log, tmp_path)
    obj = json.loads(lines[4])
    lines[4] = json.dumps(obj, ensure_ascii=True).replace("d-00004", "\\u0064-00004")
    assert json.loads(lines[4]) == obj
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.seq == 5
    assert "the line is not in its canonical form" in c.first_break.message


def test_records_cut_from_the_end(log: Path, tmp_path: Path) -> None:
    # What the chain alone cannot show: it is intact, only shorter. The head file can.
    d, lines = copy(log, tmp_path)
    save(d, lines[:-2])
    c = check(d)
    assert c.first_break is not None and c.first_break.where == str(d / "host.head")
    assert c.first_break.message == (
        f"the log ends at seq {N - 2} but the writer wrote seq {N}: records {N - 1} to {N} "
        "are missing (removed from the end)"
    )


def test_the_whole_log_deleted_but_its_head(log: Path, tmp_path: Path) -> None:
    d, _ = copy(log, tmp_path)
    (d / "host.jsonl").unlink()
    c = check(d)
    assert c.first_break is not None and "the log ends at seq 0" in c.first_break.message


def test_a_writer_continues_after_the_recorded_head_so_the_gap_stays(
    log: Path, tmp_path: Path
) -> None:
    d, lines = copy(log, tmp_path)
    save(d, lines[:-3])
    write_log(d, [record(N + i) for i in range(2)])  # the server restarts and writes on
    c = check(d)
    assert c.first_break is not None and c.first_break.seq == N + 1
    assert f"records {N - 2} to {N} removed or moved" in c.first_break.message


def test_a_copy_without_its_head_file_still_verifies(log: Path, tmp_path: Path) -> None:
    d, _ = copy(log, tmp_path)
    (d / "host.head").unlink()
    assert check(d).ok


def test_a_deleted_record(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    del lines[4]
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.where.endswith("host.jsonl:5")
    assert "expected seq 5, found seq 6: record 5 removed or moved" in c.first_break.message


def test_several_deleted_records(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    del lines[4:8]
    save(d, lines)
    assert "records 5 to 8 removed" in str(check(d).first_break)


def test_swapped_records(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    lines[4], lines[5] = lines[5], lines[4]
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.where.endswith("host.jsonl:5")
    assert c.first_break.seq == 6
    assert c.breaks >= 2
    assert not c.ok


def test_a_record_moved_to_the_end(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    lines.append(lines.pop(2))
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.where.endswith("host.jsonl:3")
    # The moved record is named too.
    assert any("out of order: seq 3 after seq 12" in b.message for b in c.listed)


def test_the_first_record_deleted(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    save(d, lines[1:])
    c = check(d)
    assert c.first_break is not None
    assert "the chain starts at seq 2: record 1 is missing" in c.first_break.message


def test_a_corrupt_line(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    lines[3] = lines[3][:40]
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.where.endswith("host.jsonl:4")
    assert "not a valid record: not valid JSON" in c.first_break.message


def test_a_record_from_another_chain(log: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_log(other, [record(i) for i in range(N)], chain="peer")
    d, lines = copy(log, tmp_path)
    peer = (other / "peer.jsonl").read_text(encoding="utf-8").splitlines()
    lines[6] = peer[6]  # same seq, valid hash, valid link within its own chain
    save(d, lines)
    c = check(d)
    assert c.first_break is not None and c.first_break.seq == 7
    assert "belongs to chain `peer`, found in chain `host`" in c.first_break.message


def test_a_range_reports_only_breaks_within_it(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    lines[1] = lines[1].replace('"caller":"svc-a"', '"caller":"svc-b"')  # seq 2
    save(d, lines)
    t = record(5).time_us
    later = check(d, flt=Filter(since_us=t))
    assert later.ok and later.checked == N - 5 and later.first_seq == 6
    assert not check(d, flt=Filter(until_us=t)).ok
    assert not check(d).ok


def test_a_range_with_no_records_is_no_cut_but_a_cut_end_still_shows(
    log: Path, tmp_path: Path
) -> None:
    # `verify --since 1d` on a quiet day: nothing in range, and nothing missing.
    after = record(N + 100).time_us
    quiet = check(log, flt=Filter(since_us=after))
    assert quiet.ok and quiet.checked == 0
    # Records cut from the end are missing whatever the range.
    d, lines = copy(log, tmp_path)
    save(d, lines[:-2])
    cut = check(d, flt=Filter(since_us=after))
    assert cut.first_break is not None and "removed from the end" in cut.first_break.message


def test_a_log_without_its_head_verifies_and_says_so(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    (d / "host.head").unlink()
    save(d, lines[:-2])  # cut from the end: with no head, nothing can show it
    c = check(d)
    assert c.ok and c.no_head
    assert describe(c).endswith("; no head recorded: records cut from the end would go unseen")
    assert c.to_json()["head_recorded"] is False
    assert not check(log).no_head


def test_a_single_file_may_continue_an_earlier_one(log: Path, tmp_path: Path) -> None:
    d, lines = copy(log, tmp_path)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(x + "\n" for x in lines[5:]), encoding="utf-8")
    report = verify(JsonlSource(part), single_file=True)
    c = report.chains[0]
    assert c.ok and c.starts_after == 5 and c.checked == N - 5
    assert "continuing seq 5 of an earlier file" in describe(c)
    # The same file read as a whole chain is missing its start.
    assert not verify(JsonlSource(part)).ok


def test_times_in_the_range_helper() -> None:
    f = Filter(since_us=us(record(2).time), until_us=us(record(4).time))
    assert [i for i in range(6) if f.in_range(record(i).time_us)] == [2, 3]


def test_verifying_a_log_while_it_is_written_reports_nothing(tmp_path: Path) -> None:
    # The head moves after the records it names; verify reads it before the records.
    d = tmp_path / "live"
    w = AuditWriter(JsonlSink(d), chain="host", mode="durable")
    w.start()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            assert w.submit([record(i)]).wait(10)
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        wait_for(lambda: (d / "host.head").exists(), what="the first batch")
        for _ in range(30):
            report = verify(JsonlSource(d))
            assert all(c.ok for c in report.chains), [describe(c) for c in report.chains]
    finally:
        stop.set()
        t.join(10)
        w.close()
    assert check(d).ok
