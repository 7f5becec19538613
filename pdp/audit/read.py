"""Reading the audit log back: one protocol over the file log, the SQL table and memory.

The file log is read by scanning (a cheap substring test first, JSON parsing only for
lines that can match); the SQL table by indexed queries (`pdp.audit.sql`). Both give
the same answers. A line that is not a valid record is reported as a `Problem` with
its file and line number and skipped, so the rest stays searchable.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pdp.audit.jsonl import (
    CHAIN_RE,
    HEAD_SUFFIX,
    SUFFIX,
    Segment,
    head_path,
    read_blocks,
    read_head,
    read_lines,
    segments,
)
from pdp.audit.query import Filter, Page, Problem, QueryError, Stats
from pdp.audit.record import DecisionRecord, RecordError, canonical, format_time, parse_line
from pdp.audit.sink import ChainHead, MemorySink, SinkError


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored record as verify sees it: parsed, or why it could not be."""

    where: str  # `file:line` or `table seq N`
    record: DecisionRecord | None
    obj: dict[str, Any] | None  # the parsed JSON object, to recompute the hash from
    problem: str | None = None  # why `record` is None
    mismatch: str | None = None  # SQL: indexed columns that disagree with the record


class AuditSource(Protocol):
    """What `pdp audit` reads: search, one record, stats, chains for verify, follow."""

    description: str

    def search(self, flt: Filter, limit: int, cursor: str | None = None) -> Page:
        """Matching records, newest first, at most `limit`, after `cursor`."""
        ...

    def get(self, decision_id: str) -> tuple[DecisionRecord | None, list[Problem]]:
        """The record of one decision, if stored."""
        ...

    def stats(self, flt: Filter) -> Stats:
        """Counts over the matching records."""
        ...

    def chains(self) -> list[str]:
        """The chains stored ("" for a single file: the chain its records name)."""
        ...

    def chain_entries(self, chain: str) -> Iterator[Entry]:
        """Every stored entry of `chain`, in stored order (files) or `seq` order (SQL)."""
        ...

    def recorded_head(self, chain: str) -> ChainHead | None:
        """The last (seq, hash) the chain's writer recorded apart from the records, if any."""
        ...

    def head_where(self, chain: str) -> str:
        """Where that head is kept, for messages (`CHAIN.head`, or a table and chain)."""
        ...

    def follow(
        self, flt: Filter, stop: Callable[[], bool], poll: float = 0.25
    ) -> Iterator[DecisionRecord | Problem]:
        """Records stored from now on that match, until `stop()` is true."""
        ...

    def close(self) -> None: ...


# --- cursors ------------------------------------------------------------------------------


def encode_cursor(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, shape: tuple[type, ...]) -> list[Any]:
    """The parts of a cursor made by `encode_cursor`; QueryError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        parts = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(shape)
        or not all(
            isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, shape, strict=True)
        )
    ):
        raise QueryError(f"`{text}` is not a cursor of this audit log (copy it from a search)")
    return parts


# --- scanning sources ---------------------------------------------------------------------


class ScanSource:
    """Search, stats and get by reading every line; subclasses say where lines come from."""

    description = ""

    def recorded_head(self, chain: str) -> ChainHead | None:
        return None

    def head_where(self, chain: str) -> str:
        return f"{chain}{HEAD_SUFFIX}"

    def _blocks(self, newest_first: bool = False) -> Iterator[tuple[str, int, bytes]]:
        """(file, number of the first line, block of whole lines) for every stored line,
        chain by chain; `newest_first`: each chain from its end backwards, which lets a
        search for the newest records skip parsing almost every older line."""
        raise NotImplementedError

    def _records(
        self,
        flt: Filter,
        problems: list[Problem],
        *,
        newest_first: bool = False,
        floor: list[bytes] | None = None,
        ceiling: bytes | None = None,
    ) -> Iterator[DecisionRecord]:
        """The matching records.

        Lines whose time is below `floor[0]` (kept up to date by the caller while it
        consumes) or above `ceiling` (fixed-width time text) are skipped unparsed:
        they cannot make the page.
        """
        needles = [tuple(x.encode("utf-8") for x in group) for group in flt.needles()]
        lo = format_time(flt.since_us).encode() if flt.since_us is not None else None
        hi = format_time(flt.until_us).encode() if flt.until_us is not None else None
        timed = lo is not None or hi is not None or ceiling is not None or floor is not None
        for name, n, raw in self._lines(needles, newest_first):
            # Cheap tests on the bytes first: most lines of a big log fail one of them.
            if needles and not all(any(x in raw for x in group) for group in needles):
                continue
            if timed:
                # The last one: the record's own `time` comes after every section that
                # may hold a caller's `time` attribute (the canonical form sorts keys,
                # and only `v` and `hash` follow it).
                at = raw.rfind(b'"time":"')
                if at >= 0:
                    t = raw[at + 8 : at + 35]
                    if (
                        (lo is not None and t < lo)
                        or (hi is not None and t >= hi)
                        or (ceiling is not None and t > ceiling)
                        or (floor and t < floor[0])
                    ):
                        continue
            try:
                record = parse_line(raw.decode("utf-8", "replace"))[0]
            except RecordError as exc:
                if raw.strip():
                    problems.append(Problem(f"{name}:{n}", f"not a valid record: {exc}"))
                else:
                    problems.append(Problem(f"{name}:{n}", "empty line"))
                continue
            if flt.matches(record):
                yield record

    def _lines(
        self, needles: list[tuple[bytes, ...]], newest_first: bool
    ) -> Iterator[tuple[str, int, bytes]]:
        """(file, line number, line) of the lines that contain one of `needles[0]`, or
        of every line when there are no needles."""
        anchors = needles[0] if needles else ()
        for name, first, block in self._blocks(newest_first):
            if anchors:
                spans = _spans_with(block, anchors)
            else:
                spans = _all_spans(block)
            numbered = _numbered(block, first, spans)
            for n, start, end in reversed(numbered) if newest_first else numbered:
                yield name, n, block[start:end].rstrip(b"\r")

    def search(self, flt: Filter, limit: int, cursor: str | None = None) -> Page:
        if limit < 1:
            raise QueryError("--limit must be at least 1")
        bound: tuple[int, str, int] | None = None
        if cursor:
            t, chain, seq = decode_cursor(cursor, (int, str, int))
            bound = (t, chain, seq)
        problems: list[Problem] = []
        best: list[tuple[tuple[int, str, int], int, DecisionRecord]] = []
        tie = 0  # keeps heap entries comparable when keys are equal (a copied record)

        # Once the page is full, a line older than its oldest record cannot get in.
        floor: list[bytes] = []
        ceiling = format_time(bound[0]).encode() if bound is not None else None
        found = self._records(flt, problems, newest_first=True, floor=floor, ceiling=ceiling)
        for r in found:
            key = (r.time_us, r.chain, r.seq)
            if bound is not None and key >= bound:
                continue
            tie += 1
            item = (key, tie, r)
            if len(best) <= limit:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
            else:
                continue
            if len(best) > limit:
                floor[:] = [format_time(best[0][0][0]).encode()]
        ordered = sorted(best, reverse=True)
        next_cursor = None
        if len(ordered) > limit:
            ordered = ordered[:limit]
            next_cursor = encode_cursor(list(ordered[-1][0]))
        problems.sort(key=_place)
        return Page([r for _, _, r in ordered], next_cursor, problems)

    def get(self, decision_id: str) -> tuple[DecisionRecord | None, list[Problem]]:
        problems: list[Problem] = []
        flt = Filter({"decision_id": (decision_id,)})
        for r in self._records(flt, problems):
            return r, problems
        return None, problems

    def stats(self, flt: Filter) -> Stats:
        out = Stats()
        for r in self._records(flt, out.problems):
            out.add(r)
        return out

    def close(self) -> None:
        pass


def _spans_with(block: bytes, needles: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """(start, end) of each line of `block` holding one of `needles`, in order."""
    starts: set[int] = set()
    for needle in needles:
        at = block.find(needle)
        while at >= 0:
            start = block.rfind(b"\n", 0, at) + 1
            end = block.find(b"\n", at)
            starts.add(start)
            at = block.find(needle, end)
    return [(s, block.find(b"\n", s)) for s in sorted(starts)]


def _all_spans(block: bytes) -> list[tuple[int, int]]:
    spans = []
    start = 0
    end = block.find(b"\n")
    while end >= 0:
        spans.append((start, end))
        start = end + 1
        end = block.find(b"\n", start)
    return spans


def _numbered(block: bytes, first: int, spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(line number, start, end) for spans in block order: newlines counted between them."""
    out = []
    n, at = first, 0
    for start, end in spans:
        n += block.count(b"\n", at, start)
        out.append((n, start, end))
        at = start
    return out


def _place(p: Problem) -> tuple[str, int]:
    name, _, line = p.where.rpartition(":")
    return (name, int(line)) if line.isdigit() else (p.where, 0)


def _entry(name: str, n: int, line: str) -> Entry:
    where = f"{name}:{n}"
    try:
        record, obj = parse_line(line)
    except RecordError as exc:
        return Entry(where, None, None, f"not a valid record: {exc}")
    # The hash covers the parsed content; the bytes must also be the canonical text it
    # was written as. A re-encoded line (`\u` escapes, spaces, other key order) hashes
    # the same but escapes the byte-level filters of search and show: a way to hide it.
    body = canonical({k: v for k, v in obj.items() if k != "hash"})
    if line != f'{body[:-1]},"hash":"{obj.get("hash")}"}}':
        return Entry(where, record, obj, None, "the line is not in its canonical form")
    return Entry(where, record, obj)


class JsonlSource(ScanSource):
    """An audit directory (every chain) or one file of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no audit log at {self.path} (no such file or directory)")
        if self.path.is_file() and self.path.suffix != SUFFIX:
            # A head or lock file (or anything else) would only read as corrupt records.
            raise FileNotFoundError(
                f"{self.path} is not an audit log file (`*{SUFFIX}`); give the file or its "
                "directory"
            )
        self.description = str(self.path)
        self.single = self.path.is_file()

    def _segments(self) -> dict[str, list[Segment]]:
        found = segments(self.path)
        # A single file is one chain whatever its name: the chain its records name.
        return {"": next(iter(found.values()))} if self.single else found

    def _blocks(self, newest_first: bool = False) -> Iterator[tuple[str, int, bytes]]:
        for segs in self._segments().values():
            for seg in reversed(segs) if newest_first else segs:
                name = str(seg.path)
                for first, block in read_blocks(seg.path, reverse=newest_first):
                    yield name, first, block

    def chains(self) -> list[str]:
        found = list(self._segments())
        if not self.single:
            # A chain whose every segment was deleted still has its head file.
            for h in sorted(self.path.glob(f"*{HEAD_SUFFIX}")):
                name = h.name[: -len(HEAD_SUFFIX)]
                if CHAIN_RE.match(name) and name not in found:
                    found.append(name)
        return found

    def head_where(self, chain: str) -> str:
        return str(head_path(self.path, chain))  # named as the records' files are

    def recorded_head(self, chain: str) -> ChainHead | None:
        if self.single or not chain:
            return None  # a file on its own: its chain's head file is not with it
        try:
            return read_head(self.path, chain)
        except SinkError:
            return ChainHead(-1, "")  # unreadable: verify says so

    def chain_entries(self, chain: str) -> Iterator[Entry]:
        for seg in self._segments().get(chain, []):
            name = str(seg.path)
            for n, line in read_lines(seg.path):
                yield _entry(name, n, line)

    def follow(
        self, flt: Filter, stop: Callable[[], bool], poll: float = 0.25
    ) -> Iterator[DecisionRecord | Problem]:
        # Positions are taken now, not at the first `next`: records stored between this
        # call and the first read are not missed.
        tails = {
            chain: _Tail(segs[-1].path, at_end=True) for chain, segs in self._segments().items()
        }
        return self._poll(tails, flt, stop, poll)

    def _poll(
        self, tails: dict[str, _Tail], flt: Filter, stop: Callable[[], bool], poll: float
    ) -> Iterator[DecisionRecord | Problem]:
        try:
            while not stop():
                for chain, segs in self._segments().items():
                    tail = tails.get(chain)
                    if tail is None:
                        # A chain that appeared since: read it from its start.
                        tail = tails[chain] = _Tail(segs[0].path, at_end=False)
                        for seg in segs[1:]:
                            yield from tail.read(flt)
                            tail.switch(seg.path)
                    yield from tail.read(flt)
                    if not tail.same_file(segs[-1].path):
                        # Rotated (maybe more than once since the last look): finish the
                        # segment being read, then read every later one in order. The
                        # listing is taken again: the one above may predate the rename.
                        yield from tail.read(flt)
                        segs = self._segments().get(chain, [])
                        at = next((i for i, g in enumerate(segs) if tail.is_file(g.path)), None)
                        if at is None:
                            continue  # our file is not listed yet: look again next time
                        for seg in segs[at + 1 :]:
                            tail.switch(seg.path)
                            yield from tail.read(flt)
                time.sleep(poll)
        finally:
            for tail in tails.values():
                tail.close()


class _Tail:
    """Reads lines appended to one file, keeping a partial last line for later."""

    def __init__(self, path: Path, *, at_end: bool) -> None:
        self.f = open(path, "rb")  # kept open across polls
        self.path = path
        self.line = 0
        self.partial = b""
        if at_end:
            data = self.f.read()
            cut = data.rfind(b"\n") + 1
            self.line = data.count(b"\n", 0, cut)
            self.f.seek(cut)

    def same_file(self, path: Path) -> bool:
        try:
            return os.stat(path).st_ino == os.fstat(self.f.fileno()).st_ino
        except FileNotFoundError:
            return True  # between the rename and the new file: keep reading this one

    def is_file(self, path: Path) -> bool:
        """Whether `path` is the file being read now (False when `path` is gone)."""
        try:
            return os.stat(path).st_ino == os.fstat(self.f.fileno()).st_ino
        except FileNotFoundError:
            return False

    def switch(self, path: Path) -> None:
        self.f.close()
        self.f = open(path, "rb")
        self.path = path
        self.line = 0
        self.partial = b""

    def read(self, flt: Filter) -> Iterator[DecisionRecord | Problem]:
        data = self.partial + self.f.read()
        *complete, self.partial = data.split(b"\n")
        for raw in complete:
            self.line += 1
            text = raw.decode("utf-8", "replace")
            try:
                record = parse_line(text)[0]
            except RecordError as exc:
                yield Problem(f"{self.path}:{self.line}", f"not a valid record: {exc}")
                continue
            if flt.matches(record):
                yield record

    def close(self) -> None:
        self.f.close()


class MemorySource(ScanSource):
    """Reads what a `MemorySink` holds (tests, embedding)."""

    def __init__(self, sink: MemorySink) -> None:
        self.sink = sink
        self.description = "memory"

    def _blocks(self, newest_first: bool = False) -> Iterator[tuple[str, int, bytes]]:
        text = "".join(line + "\n" for line in list(self.sink.lines))
        yield "memory", 1, text.encode("utf-8")

    def chains(self) -> list[str]:
        return sorted({r.chain for r in self.sink.records})

    def chain_entries(self, chain: str) -> Iterator[Entry]:
        for i, line in enumerate(list(self.sink.lines), 1):
            e = _entry("memory", i, line)
            if e.record is None or e.record.chain == chain:
                yield e

    def follow(
        self, flt: Filter, stop: Callable[[], bool], poll: float = 0.05
    ) -> Iterator[DecisionRecord | Problem]:
        return self._poll(len(self.sink.lines), flt, stop, poll)

    def _poll(
        self, seen: int, flt: Filter, stop: Callable[[], bool], poll: float
    ) -> Iterator[DecisionRecord | Problem]:
        while not stop():
            lines = self.sink.lines[seen:]
            seen += len(lines)
            for line in lines:
                r = parse_line(line)[0]
                if flt.matches(r):
                    yield r
            time.sleep(poll)


def open_source(
    *, log: str | None = None, db: str | None = None, table: str | None = None
) -> AuditSource:
    """The file log at `log`, or the SQL table at `db`; FileNotFoundError / SinkError."""
    if db:
        from pdp.audit.sql import DEFAULT_TABLE, SqlSource

        return SqlSource(db, table=table or DEFAULT_TABLE)
    assert log is not None
    return JsonlSource(log)
