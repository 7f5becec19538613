"""The SQL sink on SQLite and PostgreSQL: durable batches, chains, tampering, indexes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, inspect, select, text, update

from pdp.audit.query import Filter, make_filter
from pdp.audit.record import DecisionRecord
from pdp.audit.sink import SinkError
from pdp.audit.sql import SqlSink, SqlSource, drop_tables, parse_url
from pdp.audit.verify import verify
from pdp.audit.writer import AuditWriter
from tests.audit.support import record, wait_for

N = 20


@pytest.fixture
def filled(sql_url: str, table: str) -> Iterator[SqlSource]:
    """N records in chain `a`, N in chain `b` (two replicas sharing one table)."""
    for chain in ("a", "b"):
        w = AuditWriter(SqlSink(sql_url, table=table), chain=chain)
        w.start()
        for i in range(N):
            r = record(i)
            r = r.__class__(**{**_fields(r), "decision_id": f"{chain}-{i}"})
            assert w.submit([r]).wait(10)
        w.close()
    src = SqlSource(sql_url, table=table)
    try:
        yield src
    finally:
        src.close()
        drop_tables(sql_url, table=table)


def _fields(r: DecisionRecord) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def test_two_chains_share_the_table_and_both_verify(filled: SqlSource) -> None:
    assert filled.chains() == ["a", "b"]
    report = verify(filled)
    assert report.ok and [c.checked for c in report.chains] == [N, N]
    assert len(filled.search(Filter(), 1000).records) == 2 * N


def test_the_tables_and_indexes_exist(filled: SqlSource) -> None:
    insp = inspect(filled.engine)
    name = filled.audit.name
    assert {name, f"{name}_rules", f"{name}_heads"} <= set(insp.get_table_names())
    indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(name)}
    for col in ("subject_id", "resource_id", "resource_type", "action", "allowed", "caller"):
        assert (col, "time_us", "id") in indexed
    assert ("time_us", "id") in indexed and ("decision_id",) in indexed


def test_a_writer_continues_its_chain_after_a_restart(filled: SqlSource) -> None:
    w = AuditWriter(SqlSink(filled.url.render_as_string(False), table=filled.audit.name), chain="a")
    w.start()
    assert w.submit([record(99)]).wait(10)
    w.close()
    report = verify(filled)
    assert report.ok and report.chains[0].last_seq == N + 1


def test_tampering_in_the_table_is_found(filled: SqlSource) -> None:
    a = filled.audit
    with filled.engine.begin() as conn:
        # Chain a: the indexed column says allow, the hashed record still says deny.
        conn.execute(update(a).where(a.c.chain == "a", a.c.seq == 5).values(allowed=True))
        # Chain b: a record deleted.
        conn.execute(delete(a).where(a.c.chain == "b", a.c.seq == 9))
    report = verify(filled)
    ca, cb = report.chains
    assert ca.first_break is not None and ca.first_break.seq == 5
    assert "indexed columns differ from the record: allowed" in ca.first_break.message
    assert cb.first_break is not None and cb.first_break.seq == 10
    assert "record 9 removed or moved" in cb.first_break.message


def test_tampering_with_the_rules_index_is_found(filled: SqlSource) -> None:
    # `search rule=...` and stats read the rules side table: a row removed there hides
    # its record from a search by that rule; a row changed or moved shows a record
    # under a rule that did not decide it. The chain itself is intact.
    a, r = filled.audit, filled.rules
    with filled.engine.begin() as conn:
        ruled = conn.execute(
            select(a.c.chain, a.c.seq, a.c.id, r.c.rule_id)
            .join(r, r.c.audit_id == a.c.id)
            .order_by(a.c.chain, a.c.seq)
        ).all()
        in_a = [x for x in ruled if x.chain == "a"]
        in_b = [x for x in ruled if x.chain == "b"]
        gone, renamed, moved, onto = in_a[0], in_a[1], in_b[0], in_b[2]
        conn.execute(delete(r).where(r.c.audit_id == gone.id, r.c.rule_id == gone.rule_id))
        conn.execute(
            update(r)
            .where(r.c.audit_id == renamed.id, r.c.rule_id == renamed.rule_id)
            .values(rule_id="made.up")
        )
        conn.execute(
            update(r)
            .where(r.c.audit_id == moved.id, r.c.rule_id == moved.rule_id)
            .values(audit_id=onto.id)
        )
    report = verify(filled)
    ca, cb = report.chains
    table = f"{a.name}_rules"
    assert [(b.seq, b.message) for b in ca.listed] == [
        (
            gone.seq,
            f"changed: the rules index ({table}) differs from the record: it lacks {gone.rule_id}",
        ),
        (
            renamed.seq,
            f"changed: the rules index ({table}) differs from the record: it lacks "
            f"{renamed.rule_id} and has made.up",
        ),
    ]
    assert [b.seq for b in cb.listed] == [moved.seq, onto.seq]
    assert cb.listed[0].message.endswith(f"it lacks {moved.rule_id}")
    # Moved onto a record that has the same rule: there, with the other record's time.
    assert cb.listed[1].message.startswith(f"changed: the rules index ({table}) differs")


def test_rows_deleted_from_the_end_are_found_by_the_head(filled: SqlSource) -> None:
    # What the chain alone cannot show: it is intact, only shorter. The head row can.
    a = filled.audit
    with filled.engine.begin() as conn:
        conn.execute(delete(a).where(a.c.chain == "a", a.c.seq > N - 2))
    ca, cb = verify(filled).chains
    assert cb.ok
    assert ca.first_break is not None and ca.first_break.where == f"{a.name}_heads chain a"
    assert ca.first_break.message == (
        f"the log ends at seq {N - 2} but the writer wrote seq {N}: records {N - 1} to {N} "
        "are missing (removed from the end)"
    )


def test_a_chain_whose_every_row_was_deleted_is_still_checked(filled: SqlSource) -> None:
    a = filled.audit
    with filled.engine.begin() as conn:
        conn.execute(delete(a).where(a.c.chain == "b"))
    report = verify(filled)
    assert [c.chain for c in report.chains] == ["a", "b"]
    cb = report.chains[1]
    assert cb.first_break is not None and "the log ends at seq 0" in cb.first_break.message


def test_a_writer_continues_after_the_recorded_head_so_the_gap_stays(
    filled: SqlSource,
) -> None:
    a = filled.audit
    with filled.engine.begin() as conn:
        conn.execute(delete(a).where(a.c.chain == "b", a.c.seq > N - 3))
    w = AuditWriter(SqlSink(filled.url.render_as_string(False), table=a.name), chain="b")
    w.start()
    assert w.submit([record(99)]).wait(10)
    w.close()
    cb = verify(filled).chains[1]
    assert cb.last_seq == N + 1
    assert cb.first_break is not None and cb.first_break.seq == N + 1
    assert f"records {N - 2} to {N} removed or moved" in cb.first_break.message


def test_a_table_written_before_heads_were_kept_still_verifies(filled: SqlSource) -> None:
    filled.heads.drop(filled.engine)
    src = SqlSource(filled.url.render_as_string(False), table=filled.audit.name)
    try:
        assert src.recorded_head("a") is None
        report = verify(src)
        assert report.ok and [c.checked for c in report.chains] == [N, N]
    finally:
        src.close()


def test_an_edited_record_in_the_table_is_found(filled: SqlSource) -> None:
    a = filled.audit
    with filled.engine.begin() as conn:
        row = conn.execute(a.select().where(a.c.chain == "b", a.c.seq == 3)).one()
        forged = row.record.replace('"caller":"svc-a"', '"caller":"svc-z"')
        conn.execute(update(a).where(a.c.id == row.id).values(record=forged, caller="svc-z"))
    cb = verify(filled).chains[1]
    assert cb.first_break is not None and cb.first_break.seq == 3
    assert "does not match its hash" in cb.first_break.message


def test_follow_sees_new_records_of_every_chain(filled: SqlSource, sql_url: str) -> None:
    stop = threading.Event()
    got: list[str] = []
    follower = filled.follow(make_filter(["decision=deny"]), stop.is_set, poll=0.02)

    def consume() -> None:
        for item in follower:
            if isinstance(item, DecisionRecord):
                got.append(item.decision_id)

    t = threading.Thread(target=consume)
    t.start()
    try:
        w = AuditWriter(SqlSink(sql_url, table=filled.audit.name), chain="c")
        w.start()
        new = [record(i) for i in range(100, 112)]
        assert w.submit(new).wait(10)
        w.close()
        want = [r.decision_id for r in new if not r.allowed]
        wait_for(lambda: got == want, what=f"{want}, got {got}")
    finally:
        stop.set()
        t.join(5)


def test_a_database_that_is_down_makes_the_writer_unhealthy() -> None:
    sink = SqlSink("postgresql://postgres@127.0.0.1:1/none")
    w = AuditWriter(sink, chain="a", retry_interval=60)
    w.start()
    assert not w.healthy and "127.0.0.1" in w.stats().last_error
    t = w.submit([record(1)])
    assert not t.wait(10) and t.error
    w.close()


def test_bad_urls() -> None:
    with pytest.raises(SinkError, match="not a database URL"):
        parse_url("::nope")
    with pytest.raises(SinkError, match="unsupported database `mysql`"):
        parse_url("mysql://x@y/z")
    assert parse_url("postgresql://u@h/d").drivername == "postgresql+psycopg"


def test_postgresql_answers_filtered_searches_from_indexes(pg_schema: object, table: str) -> None:
    url = pg_schema.url()  # type: ignore[attr-defined]
    sink = SqlSink(url, table=table)
    sink.head("a")  # creates the tables
    sink.close()
    src = SqlSource(url, table=table)
    try:
        with src.engine.begin() as conn:
            # 20,000 rows, 1,000 subjects, 5 actions: enough for the planner to care.
            conn.execute(
                text(
                    f"INSERT INTO {table} (chain, seq, decision_id, time_us, caller, "
                    "subject_type, subject_id, action, resource_type, resource_id, allowed, "
                    "policy_version, bindings_version, latency_us, record) "
                    "SELECT 'a', g, 'd' || g, 1000000::bigint * g, 'svc', 'user', "
                    "'u' || (g % 1000), "
                    "'act' || (g % 5), 'doc', 'r' || g, g % 10 = 0, 'v1', '1', 100, '{}' "
                    "FROM generate_series(1, 20000) AS g"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO {table}_rules (rule_id, time_us, audit_id, allowed) "
                    f"SELECT 'rule' || (id % 50), time_us, id, allowed FROM {table}"
                )
            )
        with src.engine.connect() as conn:
            conn.execute(text(f"ANALYZE {table}"))
            conn.execute(text(f"ANALYZE {table}_rules"))
        for terms, index in (
            (["subject=user:u7"], f"{table}_subject_id_time"),
            (["resource=doc/r99"], f"{table}_resource_id_time"),
            (["rule=rule3"], f"{table}_rules_pkey"),
        ):
            plan = _plan(src, make_filter(terms))
            assert index in plan and "Seq Scan" not in plan, plan
    finally:
        src.close()
        drop_tables(url, table=table)


def _plan(src: SqlSource, flt: Filter) -> str:
    """EXPLAIN of the statement `search` runs, captured as it executes."""
    from sqlalchemy import event

    plans: list[str] = []

    def before(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not plans:
            raw = src.engine.raw_connection()
            try:
                cur = raw.cursor()
                cur.execute("EXPLAIN " + statement, params)
                plans.append("\n".join(row[0] for row in cur.fetchall()))
            finally:
                raw.close()

    event.listen(src.engine, "before_cursor_execute", before)
    try:
        src.search(flt, 10)
    finally:
        event.remove(src.engine, "before_cursor_execute", before)
    return plans[0]


def test_authn_and_http_sections_are_searchable(sql_url: str, table: str) -> None:
    """The v2 sections have no columns; the SQL source finds them in the stored line,
    and `%` or `_` in a value are literal there, not wildcards."""
    sections = [
        ({"result": "failed", "cause": "token_expired", "method": "bearer"}, "docs.read"),
        ({"result": "failed", "cause": "key_rotated", "method": "apikey"}, "docs_read"),
        ({"result": "ok", "method": "session", "credential": "token_expired"}, "docs%"),
    ]
    w = AuditWriter(SqlSink(sql_url, table=table), chain="a")
    w.start()
    for i, (authn, route) in enumerate(sections):
        r = record(i)
        fields = {**_fields(r), "decision_id": f"x-{i}", "authn": authn}
        fields["http"] = {"method": "GET", "host": "h", "path": "/", "route": route}
        assert w.submit([r.__class__(**fields)]).wait(10)
    w.close()
    src = SqlSource(sql_url, table=table)
    try:

        def ids(*terms: str) -> list[str]:
            return sorted(r.decision_id for r in src.search(make_filter(terms), 10).records)

        assert ids("authn.cause=token_expired") == ["x-0"]  # not the credential named so
        assert ids("authn.result=failed") == ["x-0", "x-1"]
        assert ids("authn.method=apikey", "http.route=docs_read") == ["x-1"]
        assert ids("http.route=docs%") == ["x-2"]
        assert ids("http.route=docs") == []
    finally:
        src.close()
        drop_tables(sql_url, table=table)
