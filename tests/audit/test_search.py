"""Search and stats: the file log and the SQL table give the same answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pdp.audit.jsonl import JsonlSink
from pdp.audit.query import Filter, QueryError, make_filter, parse_terms, parse_time_expr
from pdp.audit.read import AuditSource, JsonlSource
from pdp.audit.record import DecisionRecord, to_us
from pdp.audit.sink import DecisionSink
from pdp.audit.sql import SqlSink, SqlSource, drop_tables
from pdp.audit.writer import AuditWriter
from tests.audit.support import T0, record

N = 60


def dataset() -> list[DecisionRecord]:
    out = []
    for i in range(N):
        r = record(i, caller="svc-b" if i % 7 == 0 else "svc-a")
        if i < 10:
            r = replace(r, policy_version="sha256:0000000000000000")
        if i % 10 in (1, 2, 3):  # calls that carried a credential
            ok = {"result": "ok", "method": "apikey"}
            cause = "token_expired" if i % 10 == 1 else "key_unknown"
            failed = {"result": "failed", "cause": cause, "method": "bearer"}
            r = replace(r, authn=ok if i % 10 == 3 else failed)
        out.append(r)
    return out


DATA = dataset()


def fill(sink: DecisionSink, chain: str = "host") -> None:
    w = AuditWriter(sink, chain=chain)
    w.start()
    # Several calls, out of time order inside the log, as concurrent calls would be.
    for k in range(0, N, 6):
        batch = DATA[k : k + 6]
        assert w.submit(batch[::-1]).wait(10)
    w.close()


@pytest.fixture(params=["jsonl", "sqlite", "postgresql"])
def source(request: pytest.FixtureRequest, tmp_path: Path, table: str) -> Iterator[AuditSource]:
    kind = request.param
    if kind == "jsonl":
        fill(JsonlSink(tmp_path / "log", max_bytes=8000))  # several segments
        src: AuditSource = JsonlSource(tmp_path / "log")
        yield src
        return
    url = (
        f"sqlite:///{tmp_path / 'audit.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("pg_schema").url()
    )
    fill(SqlSink(url, table=table))
    src = SqlSource(url, table=table)
    try:
        yield src
    finally:
        src.close()
        drop_tables(url, table=table)


def newest_first(pred: Callable[[DecisionRecord], bool]) -> list[str]:
    return [r.decision_id for r in sorted(DATA, key=lambda r: -r.time_us) if pred(r)]


CASES: list[tuple[list[str], Callable[[DecisionRecord], bool]]] = [
    ([], lambda r: True),
    (["subject=user:alice"], lambda r: r.subject_id == "alice"),
    (["subject=bob"], lambda r: r.subject_id == "bob"),
    (["subject=group:bob"], lambda r: False),
    (["subject.type=user", "subject.id=carol"], lambda r: r.subject_id == "carol"),
    (["action=write"], lambda r: r.action == "write"),
    (["resource=doc/17"], lambda r: r.resource_id == "17"),
    (["resource.type=doc", "resource.id=3"], lambda r: r.resource_id == "3"),
    (["resource.type=folder"], lambda r: False),
    (["decision=deny"], lambda r: not r.allowed),
    (["decision=allow", "action=read"], lambda r: r.allowed and r.action == "read"),
    (["caller=svc-b"], lambda r: r.caller == "svc-b"),
    (["rule=doc.tenant"], lambda r: "doc.tenant" in [x.rule for x in r.reasons]),
    (
        ["rule=doc.tenant", "rule=doc.viewer-read"],
        lambda r: bool({"doc.tenant", "doc.viewer-read"} & {x.rule for x in r.reasons}),
    ),
    (
        ["rule=doc.tenant", "subject=alice"],
        lambda r: r.subject_id == "alice" and "doc.tenant" in [x.rule for x in r.reasons],
    ),
    (["policy_version=sha256:0000000000000000"], lambda r: DATA.index(r) < 10),
    (["action=read", "action=write", "decision=deny"], lambda r: not r.allowed),
    (["decision_id=d-00042"], lambda r: r.decision_id == "d-00042"),
    (["chain=host", "bindings_version=7"], lambda r: True),
    (["chain=elsewhere"], lambda r: False),
]


@pytest.mark.parametrize(("terms", "pred"), CASES, ids=[" ".join(c[0]) or "all" for c in CASES])
def test_filters(
    source: AuditSource, terms: list[str], pred: Callable[[DecisionRecord], bool]
) -> None:
    page = source.search(make_filter(terms), 1000)
    assert [r.decision_id for r in page.records] == newest_first(pred)
    assert page.next_cursor is None and not page.problems


def test_time_range(source: AuditSource) -> None:
    lo, hi = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    flt = make_filter(["decision=allow"], start=lo.isoformat(), end=hi.isoformat())
    got = [r.decision_id for r in source.search(flt, 100).records]
    assert got == newest_first(lambda r: r.allowed and to_us(lo) <= r.time_us < to_us(hi))
    assert got  # the range is not empty


def test_pages_walk_everything_once_newest_first(source: AuditSource) -> None:
    flt = make_filter(["subject.type=user"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = source.search(flt, 7, cursor)
        seen += [r.decision_id for r in page.records]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first(lambda r: True)
    assert pages == -(-N // 7)


def test_get_one_record(source: AuditSource) -> None:
    r, problems = source.get("d-00033")
    assert r is not None and r.decision_id == "d-00033" and not problems
    assert r.subject_properties == {"tenant": "acme"}  # the whole record comes back
    assert source.get("nope") == (None, [])


def test_stats(source: AuditSource) -> None:
    s = source.stats(make_filter())
    denies = [r for r in DATA if not r.allowed]
    assert s.total == N
    assert s.by_decision == {"allow": N - len(denies), "deny": len(denies)}
    assert s.by_action["write"] == sum(r.action == "write" for r in DATA)
    assert s.by_resource_type == {"doc": N}
    tenant = [r for r in DATA if "doc.tenant" in [x.rule for x in r.reasons]]
    assert 0 < len(tenant) < len(denies)  # the others are default denies: no rule
    assert s.by_rule["doc.tenant"] == len(tenant)
    assert s.by_rule["doc.viewer-read"] == N - len(denies)
    assert s.denied_rules == {"doc.tenant": len(tenant)}
    assert s.denied_subjects["user:alice"] == sum(r.subject_id == "alice" for r in denies)
    assert (s.first_us, s.last_us) == (DATA[0].time_us, DATA[-1].time_us)
    only = source.stats(make_filter(["rule=doc.tenant", "action=write"]))
    assert only.total == sum(1 for r in tenant if r.action == "write")
    assert only.to_json(2)["top_denied_rules"] == [{"rule": "doc.tenant", "count": only.total}]
    assert s.authn_failures == {"token_expired": N // 10, "key_unknown": N // 10}
    denied = source.stats(make_filter(["decision=deny"])).authn_failures
    assert (
        0
        < denied.total()
        == sum(1 for r in denies if r.authn is not None and r.authn["result"] == "failed")
    )


def test_chain_entries_in_chain_order(source: AuditSource) -> None:
    assert source.chains() in (["host"], [""])
    seqs = [e.record.seq for e in source.chain_entries(source.chains()[0]) if e.record]
    assert seqs == list(range(1, N + 1))


def test_bad_cursor(source: AuditSource) -> None:
    with pytest.raises(QueryError, match="not a cursor of this audit log"):
        source.search(Filter(), 5, "bm9wZQ")
    with pytest.raises(QueryError, match="--limit"):
        source.search(Filter(), 0)


def test_a_corrupt_line_is_reported_and_the_rest_is_searchable(tmp_path: Path) -> None:
    fill(JsonlSink(tmp_path))
    path = tmp_path / "host.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[9] = '{"v": 1, "decision": "allow", "subject": '  # cut short
    lines.insert(20, "")
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    page = JsonlSource(tmp_path).search(make_filter(), 1000)
    assert [str(p) for p in page.problems] == [
        f"{path}:10: not a valid record: not valid JSON (Expecting value at column 42)",
        f"{path}:21: empty line",
    ]
    assert len(page.records) == N - 1
    stats = JsonlSource(tmp_path).stats(make_filter())
    assert stats.total == N - 1 and len(stats.problems) == 2


def test_a_corrupt_row_in_sql_is_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    fill(SqlSink(url))
    src = SqlSource(url)
    with src.engine.begin() as conn:
        conn.execute(src.audit.update().where(src.audit.c.seq == 5).values(record="{oops"))
    page = src.search(make_filter(), 100)
    assert len(page.records) == N - 1
    assert [p.where for p in page.problems] == ["pdp_audit id 5"]
    # Stats read the refused credentials from the records: a corrupt one that looks
    # like one (the LIKE matches it) is a problem too, not a failed query.
    bad = '{"authn":{"cause":"x","result":"failed"} oops'
    with src.engine.begin() as conn:
        conn.execute(src.audit.update().where(src.audit.c.seq == 6).values(record=bad))
    stats = src.stats(make_filter())
    assert [p.where for p in stats.problems] == ["pdp_audit id 6"]
    assert "x" not in stats.authn_failures and stats.authn_failures.total() > 0
    src.close()


NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("45s", NOW - timedelta(seconds=45)),
        ("7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("now", NOW),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T08:30:00Z", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T08:30:00+02:00", datetime(2026, 11, 20, 6, 30, tzinfo=UTC)),
    ],
)
def test_time_expressions(text: str, expected: datetime) -> None:
    assert parse_time_expr(text, NOW) == to_us(expected)


@pytest.mark.parametrize("text", ["2x", "yesterday", "-2h", "2 hours", ""])
def test_bad_time_expressions(text: str) -> None:
    with pytest.raises(QueryError, match=r"--since: `.*` is not a time; write a duration"):
        make_filter(since=text, now=NOW)


@pytest.mark.parametrize(
    ("option", "text"),
    [("since", "99999999999w"), ("since", "800000d"), ("end", "9999-12-31T23:00:00-05:00")],
)
def test_times_out_of_range_are_an_error_not_a_traceback(option: str, text: str) -> None:
    with pytest.raises(QueryError, match=r"is out of range \(years 1 to 9999, in UTC\)"):
        make_filter(**{option: text}, now=NOW)


def test_a_time_inside_the_attributes_does_not_move_the_record(tmp_path: Path) -> None:
    # The record's own time is what a range selects on, whatever a caller put in
    # context or subject properties (a key that sorts before it in the line).
    fake = "1970-01-01T00:00:00.000000Z"
    hidden = replace(DATA[30], context={"time": fake, "at": {"time": fake}})
    w = AuditWriter(JsonlSink(tmp_path / "log"), chain="host")
    w.start()
    assert w.submit([*DATA[:30], hidden]).wait(10)
    w.close()
    src = JsonlSource(tmp_path / "log")
    lo = hidden.time_us - 1_000_000
    got = src.search(Filter({}, lo, None), 100).records
    assert hidden.decision_id in [r.decision_id for r in got]
    assert src.stats(Filter({}, lo, None)).total == len(got)


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["colour=red"], "unknown field `colour`; fields: subject, "),
        (["subjct=user:a"], "unknown field `subjct` (did you mean `subject`?)"),
        (["decision=maybe"], "decision is `allow` or `deny`"),
        (["resource=42"], "write resource=TYPE/ID"),
        (["action"], "`action` is not a filter; write FIELD=VALUE"),
        (["action="], "the value is empty"),
    ],
)
def test_bad_filters(terms: list[str], message: str) -> None:
    with pytest.raises(QueryError) as exc:
        parse_terms(terms)
    assert message in str(exc.value)


def test_bad_ranges() -> None:
    with pytest.raises(QueryError, match="give one"):
        make_filter(since="2h", start="2026-01-01")
    with pytest.raises(QueryError, match="the time range is empty"):
        make_filter(start="2026-01-02", end="2026-01-01")
