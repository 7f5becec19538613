"""Checking the hash chain: names the first record where a chain breaks.

Each record carries `seq` (its place in its chain), `prev` (the hash of the record
before it; zeros for the first) and `hash` (of its own canonical form, `prev`
included). So:

- a changed record no longer matches its `hash`; if the hash was recomputed too, the
  next record's `prev` no longer matches it;
- a removed record leaves a gap in `seq`;
- reordered (swapped, moved, duplicated) records come out of `seq` order.

What a chain cannot show by itself is records cut from its end: compare the head
that `verify` reports (last seq and hash) with one noted earlier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pdp.audit.query import Filter
from pdp.audit.read import AuditSource, Entry
from pdp.audit.record import GENESIS, record_hash
from pdp.audit.sink import ChainHead

MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain stops being intact, and why."""

    where: str  # `file:line`, or the table row
    seq: int | None
    decision_id: str | None
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "where": self.where,
            "seq": self.seq,
            "decision_id": self.decision_id,
            "message": self.message,
        }

    def __str__(self) -> str:
        what = f"seq {self.seq}" if self.seq is not None else "a line"
        ident = f" (decision {self.decision_id})" if self.decision_id else ""
        return f"{self.where}: {what}{ident}: {self.message}"


@dataclass
class ChainReport:
    """The outcome for one chain."""

    chain: str
    checked: int = 0  # records in range that were checked
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None
    breaks: int = 0  # how many in all
    first_break: Break | None = None
    listed: list[Break] = field(default_factory=list)  # the first MAX_LISTED of them
    starts_after: int | None = None  # single file: the chain starts before this file
    # The chain's last record, in the time range or not: what the writer's head must be.
    end_seq: int = 0
    end_hash: str | None = None
    no_head: bool = False  # no head was recorded to compare the end with

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def to_json(self) -> dict[str, object]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "head_recorded": not self.no_head,
            "breaks": self.breaks,
            "first_break": None if self.first_break is None else self.first_break.to_json(),
            "breaks_listed": [b.to_json() for b in self.listed],
        }


@dataclass
class Report:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)


def verify(source: AuditSource, flt: Filter | None = None, *, single_file: bool = False) -> Report:
    """Check every chain of `source`; with a time range, report breaks within it only.

    `single_file`: the source is one file on its own, whose first record may continue
    a chain that started in an earlier file.
    """
    flt = flt or Filter()
    report = Report()
    for chain in source.chains():
        # The head first, then the records: a live writer stores records before it
        # moves the head, so what is read next reaches at least this far.
        head = source.recorded_head(chain) if flt.until_us is None else None
        out = verify_chain(chain, source.chain_entries(chain), flt, single_file=single_file)
        _check_head(out, head, source.head_where(chain))
        # Said, not a break: a copy of a log may come without its head (see docs).
        out.no_head = head is None and flt.until_us is None and bool(chain)
        report.chains.append(out)
    return report


def _check_head(out: ChainReport, head: ChainHead | None, where: str) -> None:
    """The chain must reach the head its writer recorded: else records were cut off."""
    if head is None:
        return
    # The chain's true end, not the last record of a time range (`--since 1d` on a
    # quiet day has none, and is no cut).
    last = out.end_seq
    if head.seq < 0:
        problem = "its head file cannot be read, so records cut from the end would go unseen"
    elif last < head.seq:
        cut = (
            f"record {head.seq} is"
            if last + 1 == head.seq
            else f"records {last + 1} to {head.seq} are"
        )
        problem = (
            f"the log ends at seq {last} but the writer wrote seq {head.seq}: {cut} "
            "missing (removed from the end)"
        )
    elif last == head.seq and out.end_hash != head.hash:
        problem = f"the last record (seq {last}) is not the one the writer wrote"
    else:
        return  # at or past the head: a head written just before a crash lags, never leads
    b = Break(where, head.seq if head.seq >= 0 else None, None, problem)
    out.breaks += 1
    if out.first_break is None:
        out.first_break = b
    if len(out.listed) < MAX_LISTED:
        out.listed.append(b)


def verify_chain(
    chain: str, entries: Iterable[Entry], flt: Filter, *, single_file: bool = False
) -> ChainReport:
    """Walk one chain's entries in stored order and find where it breaks.

    A break is counted when it falls between the first and the last record in the
    time range (a line that cannot be read counts when it comes after the range
    started). After a break the walk continues from the record found, so one fault
    is counted once or twice, not for every record after it.
    """
    out = ChainReport(chain or "(file)")
    expected_chain = chain or None
    prev_seq: int | None = None
    prev_hash: str | None = None
    started = False
    # Breaks after the last in-range record do not count; hold them until we know.
    pending: list[Break] = []

    def found(b: Break) -> None:
        pending.append(b)

    def commit() -> None:
        for b in pending:
            out.breaks += 1
            if out.first_break is None:
                out.first_break = b
            if len(out.listed) < MAX_LISTED:
                out.listed.append(b)
        pending.clear()

    for e in entries:
        r = e.record
        if r is None:
            if started or flt.since_us is None:
                found(Break(e.where, None, None, e.problem or "not a valid record"))
            continue
        in_range = flt.in_range(r.time_us)
        if in_range:
            started = True
        if expected_chain is None:
            expected_chain = r.chain
        problems: list[str] = []
        assert e.obj is not None
        if record_hash(e.obj) != r.hash:
            problems.append("changed: the record does not match its hash")
        if e.mismatch:
            problems.append(f"changed: {e.mismatch}")
        if r.chain != expected_chain:
            problems.append(f"belongs to chain `{r.chain}`, found in chain `{expected_chain}`")
        if prev_seq is None:
            if single_file and r.seq > 1:
                out.starts_after = r.seq - 1
            elif r.seq != 1 or r.prev != GENESIS:
                missing = f"records 1 to {r.seq - 1} are" if r.seq > 2 else "record 1 is"
                problems.append(
                    f"the chain starts at seq {r.seq}: {missing} missing (removed)"
                    if r.seq > 1
                    else "the first record does not start the chain (its prev is not zeros)"
                )
        elif r.seq == prev_seq + 1:
            if r.prev != prev_hash:
                problems.append(
                    f"does not follow the record before it (seq {prev_seq}): that record "
                    "was changed, or this one was"
                )
        elif r.seq > prev_seq + 1:
            gap = (
                f"record {prev_seq + 1}"
                if r.seq == prev_seq + 2
                else f"records {prev_seq + 1} to {r.seq - 1}"
            )
            problems.append(
                f"expected seq {prev_seq + 1}, found seq {r.seq}: {gap} removed or moved"
            )
        else:
            problems.append(
                f"out of order: seq {r.seq} after seq {prev_seq} (records swapped, moved "
                "or duplicated)"
            )
        if problems and (started or in_range):
            found(Break(e.where, r.seq, r.decision_id, "; ".join(problems)))
        if in_range:
            commit()
            out.checked += 1
            out.first_seq = r.seq if out.first_seq is None else out.first_seq
            out.last_seq = r.seq
            out.head_hash = r.hash
        prev_seq, prev_hash = r.seq, r.hash
        out.end_seq, out.end_hash = r.seq, r.hash
    if flt.until_us is None:
        commit()  # trailing unreadable lines count when the range is open-ended
    return out


def describe(report: ChainReport) -> str:
    """One line for people."""
    if report.first_break is not None:
        more = f" ({report.breaks} problems in all)" if report.breaks > 1 else ""
        return f"chain {report.chain}: BROKEN at {report.first_break}{more}"
    if not report.checked:
        return f"chain {report.chain}: no records in range"
    start = (
        f", continuing seq {report.starts_after} of an earlier file" if report.starts_after else ""
    )
    unseen = (
        "; no head recorded: records cut from the end would go unseen" if report.no_head else ""
    )
    return (
        f"chain {report.chain}: ok, {report.checked} records, seq {report.first_seq} to "
        f"{report.last_seq}{start}; head {report.head_hash}{unseen}"
    )
