"""The SQL sink and source: one table of records (SQLite or PostgreSQL, via SQLAlchemy).

Each record is stored whole, as its sealed JSON line (the `record` column, which is
what the chain hashes), and the fields people search by are copied into indexed
columns. Every index ends with `(time_us, id)`, so "newest first" with a filter is
one backward index range scan that stops after a page. Rule ids live in a side table
(`<table>_rules`) indexed by `(rule_id, time_us, audit_id)`.

A third table (`<table>_heads`) keeps each chain's last written `(seq, hash)`, set in
the same transaction as the batch: what a chain cannot show by itself is records cut
from its end, and `verify` compares the chain with its head (as the JSONL log's
`CHAIN.head` file does).

This module has its own metadata; it shares nothing with the role store's models.
The tables are created when missing (no migrations yet: schema version 1; the heads
table is added to an older database by the next server start).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable

from pdp.audit.query import SECTION_FIELDS, Filter, Page, Problem, QueryError, Stats
from pdp.audit.read import Entry, decode_cursor, encode_cursor
from pdp.audit.record import DecisionRecord, RecordError, parse_line
from pdp.audit.sink import ChainHead, SinkError

log = logging.getLogger("pdp.audit")

DEFAULT_TABLE = "pdp_audit"
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only


def parse_url(text: str) -> URL:
    """A SQLite or PostgreSQL URL (`postgresql://` means psycopg 3); SinkError otherwise."""
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        from pdp.store.config import redact_text

        raise SinkError(
            f"`{redact_text(text)}` is not a database URL; write e.g. sqlite:///pdp-audit.db or "
            "postgresql://user@host:5432/db"
        ) from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise SinkError(f"unsupported database `{backend}`; use SQLite or PostgreSQL")


def shown(url: URL) -> str:
    from pdp.store.config import redact

    return redact(url)


def make_tables(metadata: MetaData, name: str) -> tuple[Table, Table, Table]:
    """The records table, its rules side table (with the search indexes), and the heads."""
    audit = Table(
        name,
        metadata,
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("chain", String(100), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("decision_id", String(64), nullable=False),
        Column("time_us", BigInteger, nullable=False),
        Column("caller", String, nullable=False),
        Column("subject_type", String, nullable=False),
        Column("subject_id", String, nullable=False),
        Column("action", String, nullable=False),
        Column("resource_type", String, nullable=False),
        Column("resource_id", String, nullable=False),
        Column("allowed", Boolean, nullable=False),
        Column("policy_version", String, nullable=False),
        Column("bindings_version", String, nullable=False),
        Column("latency_us", BigInteger, nullable=False),
        Column("record", Text, nullable=False),
        UniqueConstraint("chain", "seq", name=f"{name}_chain_seq"),
    )
    Index(f"{name}_decision_id", audit.c.decision_id, unique=True)
    Index(f"{name}_time", audit.c.time_us, audit.c.id)
    for col in (
        "subject_id",
        "resource_id",
        "resource_type",
        "action",
        "allowed",
        "caller",
        "policy_version",
    ):
        Index(f"{name}_{col}_time", audit.c[col], audit.c.time_us, audit.c.id)
    rules = Table(
        f"{name}_rules",
        metadata,
        Column("rule_id", String, primary_key=True),
        Column("time_us", BigInteger, primary_key=True),
        Column("audit_id", _ID, primary_key=True),
        Column("allowed", Boolean, nullable=False),
    )
    heads = Table(
        f"{name}_heads",
        metadata,
        Column("chain", String(100), primary_key=True),
        Column("seq", BigInteger, nullable=False),
        Column("hash", String(64), nullable=False),
    )
    return audit, rules, heads


def _engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 10.0},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy's BEGIN below, not pysqlite's
            cur = dbapi_conn.cursor()
            if not memory:
                # Readers never block the writer; FULL: a commit survives power loss too,
                # which is what `durable` promises.
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        url,
        connect_args={"connect_timeout": 5, "application_name": "pdp-audit"},
        pool_size=2,
        pool_pre_ping=True,
    )


class _SqlBase:
    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> None:
        self.url = parse_url(url)
        self.description = f"{shown(self.url)} table {table}"
        self.metadata = MetaData(schema=schema)
        self.audit, self.rules, self.heads = make_tables(self.metadata, table)
        self.engine = _engine(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def _error(self, exc: SQLAlchemyError) -> SinkError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return SinkError(f"audit table at {shown(self.url)}: {reason}")


class SqlSink(_SqlBase):
    """Stores sealed records: one transaction per batch, committed before returning."""

    def __init__(
        self,
        url: str,
        *,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        create: bool = True,
    ) -> None:
        super().__init__(url, table=table, schema=schema)
        self._create = create
        self._created = False

    def head(self, chain: str) -> ChainHead | None:
        a, h = self.audit, self.heads
        try:
            if self._create and not self._created:
                self.metadata.create_all(self.engine, checkfirst=True)
                self._created = True
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(a.c.seq, a.c.record)
                    .where(a.c.chain == chain)
                    .order_by(a.c.seq.desc())
                    .limit(1)
                ).first()
                recorded = conn.execute(select(h.c.seq, h.c.hash).where(h.c.chain == chain)).first()
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        last: ChainHead | None = None
        if row is not None:
            try:
                record = parse_line(row.record)[0]
            except RecordError as exc:
                raise SinkError(
                    f"the last record of chain `{chain}` is not valid ({exc}); "
                    "`pdp audit verify` shows what is wrong"
                ) from None
            last = ChainHead(record.seq, record.hash)
        if recorded is not None and (last is None or last.seq < recorded.seq):
            # Rows were deleted from the end. Carry on after the recorded head, so the
            # gap stays in the chain for verify to name (as the JSONL sink does).
            log.error(
                "audit chain %s ends at seq %s but seq %s was written: records were "
                "removed from the end; continuing after seq %s",
                chain,
                last.seq if last is not None else 0,
                recorded.seq,
                recorded.seq,
            )
            return ChainHead(int(recorded.seq), str(recorded.hash))
        return last

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        if not records:
            return
        rows = [
            {
                "chain": r.chain,
                "seq": r.seq,
                "decision_id": r.decision_id,
                "time_us": r.time_us,
                "caller": r.caller,
                "subject_type": r.subject_type,
                "subject_id": r.subject_id,
                "action": r.action,
                "resource_type": r.resource_type,
                "resource_id": r.resource_id,
                "allowed": r.allowed,
                "policy_version": r.policy_version,
                "bindings_version": r.bindings_version,
                "latency_us": r.latency_us,
                "record": line,
            }
            for r, line in zip(records, lines, strict=True)
        ]
        try:
            with self.engine.begin() as conn:
                ids = (
                    conn.execute(
                        insert(self.audit).returning(self.audit.c.id, sort_by_parameter_order=True),
                        rows,
                    )
                    .scalars()
                    .all()
                )
                rule_rows = [
                    {
                        "rule_id": reason.rule,
                        "time_us": r.time_us,
                        "audit_id": i,
                        "allowed": r.allowed,
                    }
                    for r, i in zip(records, ids, strict=True)
                    for reason in dict.fromkeys(r.reasons)
                ]
                if rule_rows:
                    conn.execute(insert(self.rules), rule_rows)
                self._move_heads(conn, records)
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def _move_heads(self, conn: Connection, records: Sequence[DecisionRecord]) -> None:
        """Each chain's head to its last record of the batch (in the batch's transaction)."""
        h = self.heads
        last = {r.chain: r for r in records}  # a writer's batch is one chain, in order
        for chain, r in last.items():
            moved = conn.execute(
                update(h).where(h.c.chain == chain).values(seq=r.seq, hash=r.hash)
            ).rowcount
            if not moved:  # the chain's first batch (or the first since the heads existed)
                conn.execute(insert(h).values(chain=chain, seq=r.seq, hash=r.hash))


class SqlSource(_SqlBase):
    """Reads the audit table with indexed queries; the same answers as the file log."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> None:
        parsed = parse_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            # Reading must not create an empty database where a path was mistyped.
            if not Path(parsed.database).is_file():
                raise SinkError(f"no SQLite database at {parsed.database}")
        super().__init__(url, table=table, schema=schema)
        self._heads_exist: bool | None = None  # looked up once, on first use

    def _conditions(self, flt: Filter) -> list[ColumnElement[bool]]:
        a = self.audit
        conds: list[ColumnElement[bool]] = []
        if flt.since_us is not None:
            conds.append(a.c.time_us >= flt.since_us)
        if flt.until_us is not None:
            conds.append(a.c.time_us < flt.until_us)
        for name, values in flt.terms.items():
            if name == "rule":
                continue  # a join or subquery on the rules table, below
            options = [self._term(name, v) for v in values]
            conds.append(options[0] if len(options) == 1 else or_(*options))
        return conds

    def _term(self, name: str, value: str) -> ColumnElement[bool]:
        c = self.audit.c
        if name == "subject":
            kind, sep, ident = value.partition(":")
            if sep:
                return and_(c.subject_id == ident, c.subject_type == kind)
            return c.subject_id == value
        if name == "resource":
            kind, _, ident = value.partition("/")
            return and_(c.resource_id == ident, c.resource_type == kind)
        if name == "decision":
            return c.allowed == (value == "allow")
        if name in SECTION_FIELDS:
            # No column of their own: matched in the stored line, whose keys are sorted
            # (canonical form), so the section's key comes after the section's name.
            section, _, key = name.partition(".")
            text = json.dumps(value, ensure_ascii=False)
            literal = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return c.record.like(f'%"{section}":{{%"{key}":{literal}%', escape="\\")
        column = {
            "subject.type": c.subject_type,
            "subject.id": c.subject_id,
            "action": c.action,
            "resource.type": c.resource_type,
            "resource.id": c.resource_id,
            "caller": c.caller,
            "policy_version": c.policy_version,
            "bindings_version": c.bindings_version,
            "chain": c.chain,
            "decision_id": c.decision_id,
        }[name]
        return column == value

    def _rule_ids(self, flt: Filter) -> ColumnElement[bool] | None:
        rules = flt.terms.get("rule")
        if not rules:
            return None
        r = self.rules
        sub = select(r.c.audit_id).where(r.c.rule_id.in_(rules))
        if flt.since_us is not None:
            sub = sub.where(r.c.time_us >= flt.since_us)
        if flt.until_us is not None:
            sub = sub.where(r.c.time_us < flt.until_us)
        return self.audit.c.id.in_(sub)

    def search(self, flt: Filter, limit: int, cursor: str | None = None) -> Page:
        if limit < 1:
            raise QueryError("--limit must be at least 1")
        a, r = self.audit, self.rules
        conds = self._conditions(flt)
        rules = flt.terms.get("rule")
        if rules and len(rules) == 1:
            # Walk the rule's index newest first and join each hit: fast even when the
            # rule is rare, where a time-ordered scan of all records would not be.
            t, i = r.c.time_us, r.c.audit_id
            stmt = (
                select(a.c.id, a.c.time_us, a.c.record)
                .join(r, r.c.audit_id == a.c.id)
                .where(r.c.rule_id == rules[0], *conds)
            )
            if flt.since_us is not None:
                stmt = stmt.where(t >= flt.since_us)
            if flt.until_us is not None:
                stmt = stmt.where(t < flt.until_us)
        else:
            t, i = a.c.time_us, a.c.id
            stmt = select(a.c.id, a.c.time_us, a.c.record).where(*conds)
            ids = self._rule_ids(flt)
            if ids is not None:
                stmt = stmt.where(ids)
        if cursor:
            ct, cid = decode_cursor(cursor, (int, int))
            # `t <= ct` bounds the index range; the OR only breaks ties within it.
            stmt = stmt.where(t <= ct, or_(t < ct, i < cid))
        stmt = stmt.order_by(t.desc(), i.desc()).limit(limit + 1)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        more = len(rows) > limit
        rows = rows[:limit]
        records, problems = self._parse(rows)
        next_cursor = encode_cursor([rows[-1].time_us, rows[-1].id]) if more else None
        return Page(records, next_cursor, problems)

    def _parse(self, rows: Sequence[Any]) -> tuple[list[DecisionRecord], list[Problem]]:
        records: list[DecisionRecord] = []
        problems: list[Problem] = []
        for row in rows:
            try:
                records.append(parse_line(row.record)[0])
            except RecordError as exc:
                problems.append(
                    Problem(f"{self.audit.name} id {row.id}", f"not a valid record: {exc}")
                )
        return records, problems

    def get(self, decision_id: str) -> tuple[DecisionRecord | None, list[Problem]]:
        a = self.audit
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(a.c.id, a.c.record).where(a.c.decision_id == decision_id)
                ).all()
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        records, problems = self._parse(rows)
        return (records[0] if records else None), problems

    def stats(self, flt: Filter) -> Stats:
        a, r = self.audit, self.rules
        conds = self._conditions(flt)
        ids = self._rule_ids(flt)
        if ids is not None:
            conds.append(ids)
        out = Stats()
        n = func.count().label("n")
        try:
            with self.engine.connect() as conn:
                total, first, last = conn.execute(
                    select(func.count(), func.min(a.c.time_us), func.max(a.c.time_us)).where(*conds)
                ).one()
                out.total, out.first_us, out.last_us = int(total), first, last
                for allowed, count in conn.execute(
                    select(a.c.allowed, n).where(*conds).group_by(a.c.allowed)
                ):
                    out.by_decision["allow" if allowed else "deny"] = count
                for col, counter in (
                    (a.c.action, out.by_action),
                    (a.c.resource_type, out.by_resource_type),
                ):
                    for value, count in conn.execute(select(col, n).where(*conds).group_by(col)):
                        counter[value] = count
                joined = select(r.c.rule_id, n).join(a, r.c.audit_id == a.c.id).where(*conds)
                for rule, count in conn.execute(joined.group_by(r.c.rule_id)):
                    out.by_rule[rule] = count
                for rule, count in conn.execute(
                    joined.where(r.c.allowed.is_(False)).group_by(r.c.rule_id)
                ):
                    out.denied_rules[rule] = count
                for kind, ident, count in conn.execute(
                    select(a.c.subject_type, a.c.subject_id, n)
                    .where(*conds, a.c.allowed.is_(False))
                    .group_by(a.c.subject_type, a.c.subject_id)
                    .order_by(n.desc())
                    .limit(1000)
                ):
                    out.denied_subjects[f"{kind}:{ident}" if kind else ""] = count
                # The LIKE (the same as a search for authn.result=failed) narrows the rows;
                # each is then parsed here, so a corrupt one is a problem, not a failure.
                failed = select(a.c.id, a.c.record).where(
                    *conds, self._term("authn.result", "failed")
                )
                rows = conn.execute(failed).all()
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        records, problems = self._parse(rows)
        out.problems.extend(problems)
        for rec in records:
            if rec.authn is not None and rec.authn.get("result") == "failed":
                out.authn_failures[str(rec.authn.get("cause", ""))] += 1
        return out

    def recorded_head(self, chain: str) -> ChainHead | None:
        h = self.heads
        try:
            if not self._has_heads():
                return None  # written before heads were kept: nothing to compare with
            with self.engine.connect() as conn:
                row = conn.execute(select(h.c.seq, h.c.hash).where(h.c.chain == chain)).first()
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        return ChainHead(int(row.seq), str(row.hash)) if row is not None else None

    def head_where(self, chain: str) -> str:
        return f"{self.heads.name} chain {chain}"

    def _has_heads(self) -> bool:
        if self._heads_exist is None:
            self._heads_exist = inspect(self.engine).has_table(
                self.heads.name, schema=self.metadata.schema
            )
        return self._heads_exist

    def chains(self) -> list[str]:
        a, h = self.audit, self.heads
        try:
            with self.engine.connect() as conn:
                found = {c for (c,) in conn.execute(select(a.c.chain).distinct())}
                if self._has_heads():
                    # A chain whose every row was deleted still has its head.
                    found.update(c for (c,) in conn.execute(select(h.c.chain)))
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        return sorted(found)

    def chain_entries(self, chain: str) -> Iterator[Entry]:
        a, r = self.audit, self.rules
        records = select(a).where(a.c.chain == chain).order_by(a.c.seq)
        # The rules side table, which `search rule=...` and stats read, walked beside
        # the records in the same order: a row removed, changed or moved there would
        # hide a record from a search, or show it under a rule that did not decide it.
        rules: Executable = (
            select(a.c.seq, r.c.rule_id, r.c.time_us, r.c.allowed)
            .join(a, r.c.audit_id == a.c.id)
            .where(a.c.chain == chain)
            .order_by(a.c.seq)
        )
        if self.engine.dialect.name == "sqlite":
            # SQLite's planner walks the records by (chain, seq) and scans the whole
            # side table for each (no index on audit_id): 390 s instead of 3 for
            # 100,000 records. CROSS JOIN is its way to keep the side table outside:
            # one scan, a lookup by id each, one sort.
            name = self.engine.dialect.identifier_preparer.format_table
            rules = sql_text(
                f"SELECT a.seq, r.rule_id, r.time_us, r.allowed FROM {name(r)} AS r "
                f"CROSS JOIN {name(a)} AS a WHERE r.audit_id = a.id AND a.chain = :chain "
                "ORDER BY a.seq"
            ).bindparams(chain=chain)
        streamed = {"stream_results": True, "yield_per": 2000}
        try:
            # Records first: the writer adds a record and its rules in one transaction,
            # so the rules, read after, include those of every record read.
            with self.engine.connect() as rconn, self.engine.connect() as xconn:
                rows = rconn.execution_options(**streamed).execute(records)
                indexed = _RulesBySeq(xconn.execution_options(**streamed).execute(rules))
                for row in rows:
                    yield self._entry(row, indexed.take(row.seq))
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def _entry(self, row: Any, indexed: set[tuple[str, int, bool]]) -> Entry:
        where = f"{self.audit.name} chain {row.chain} seq {row.seq}"
        try:
            record, obj = parse_line(row.record)
        except RecordError as exc:
            return Entry(where, None, None, f"not a valid record: {exc}")
        columns = {
            "chain": record.chain,
            "seq": record.seq,
            "decision_id": record.decision_id,
            "time_us": record.time_us,
            "caller": record.caller,
            "subject_type": record.subject_type,
            "subject_id": record.subject_id,
            "action": record.action,
            "resource_type": record.resource_type,
            "resource_id": record.resource_id,
            "allowed": record.allowed,
            "policy_version": record.policy_version,
            "bindings_version": record.bindings_version,
        }
        differ = [k for k, v in columns.items() if getattr(row, k) != v]
        problems = (
            ["indexed columns differ from the record: " + ", ".join(differ)] if differ else []
        )
        expected = {(x.rule, record.time_us, record.allowed) for x in record.reasons}
        if indexed != expected:
            problems.append(_rules_differ(self.rules.name, expected, indexed))
        return Entry(where, record, obj, None, "; ".join(problems) or None)

    def follow(
        self, flt: Filter, stop: Callable[[], bool], poll: float = 0.5
    ) -> Iterator[DecisionRecord | Problem]:
        a = self.audit
        # INVARIANT: a chain has one writer, which commits in seq order; so per chain,
        # "seq above the last seen" is exactly what is new. New chains are looked for
        # among the newest ids.
        try:
            with self.engine.connect() as conn:
                seen: dict[str, int] = {
                    c: s
                    for c, s in conn.execute(
                        select(a.c.chain, func.max(a.c.seq)).group_by(a.c.chain)
                    )
                }
                top = conn.execute(select(func.max(a.c.id))).scalar() or 0
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        return self._poll(seen, top, flt, stop, poll)

    def _poll(
        self, seen: dict[str, int], top: int, flt: Filter, stop: Callable[[], bool], poll: float
    ) -> Iterator[DecisionRecord | Problem]:
        a = self.audit
        while not stop():
            try:
                with self.engine.connect() as conn:
                    for (chain,) in conn.execute(
                        select(a.c.chain).where(a.c.id > top - 10_000).distinct()
                    ):
                        seen.setdefault(chain, 0)
                    rows: list[Any] = []
                    for chain, last in list(seen.items()):
                        got = conn.execute(
                            select(a.c.id, a.c.seq, a.c.record)
                            .where(a.c.chain == chain, a.c.seq > last)
                            .order_by(a.c.seq)
                            .limit(10_000)
                        ).all()
                        if got:
                            seen[chain] = got[-1].seq
                            top = max(top, max(row.id for row in got))
                            rows.extend(got)
            except SQLAlchemyError as exc:
                raise self._error(exc) from None
            records, problems = self._parse(rows)
            yield from problems
            records.sort(key=lambda rec: rec.time_us)
            yield from (rec for rec in records if flt.matches(rec))
            time.sleep(poll)


class _RulesBySeq:
    """Rows of (seq, rule_id, time_us, allowed) in seq order, taken a seq at a time."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self._rows = iter(rows)
        self._next: Any = next(self._rows, None)

    def take(self, seq: int) -> set[tuple[str, int, bool]]:
        """The rules rows of record `seq` (those of seqs before it, with no record, skipped)."""
        out: set[tuple[str, int, bool]] = set()
        while self._next is not None and self._next.seq <= seq:
            row = self._next
            if row.seq == seq:
                out.add((row.rule_id, row.time_us, bool(row.allowed)))
            self._next = next(self._rows, None)
        return out


def _rules_differ(
    table: str, expected: set[tuple[str, int, bool]], found: set[tuple[str, int, bool]]
) -> str:
    """What the rules side table says of a record that the record does not, and back."""
    parts = []
    missing = sorted({rule for rule, _, _ in expected - found})
    extra = sorted({rule for rule, _, _ in found - expected})
    if missing:
        parts.append("lacks " + ", ".join(missing))
    if extra:
        parts.append("has " + ", ".join(extra))
    if not parts:  # the same rules, with another time or decision
        parts.append("has its rules with another time or decision")
    return f"the rules index ({table}) differs from the record: it " + " and ".join(parts)


def drop_tables(url: str, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> None:
    """Drop the audit tables (tests and benchmarks)."""
    src = SqlSource(url, table=table, schema=schema)
    try:
        src.metadata.drop_all(src.engine)
    finally:
        src.close()


def row_count(url: str, *, table: str = DEFAULT_TABLE) -> int:
    """How many records the table holds."""
    src = SqlSource(url, table=table)
    try:
        with src.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(src.audit)).scalar() or 0)
    finally:
        src.close()
