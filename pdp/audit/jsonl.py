"""The JSON Lines sink: one directory, one chain per writer, rotated by size and time.

Layout of an audit directory (the default is `pdp-audit/` next to the SQLite store)::

    pdp-audit/
      <chain>.jsonl                    the segment being written
      <chain>.000000000001.jsonl       closed segments, named by their first `seq`
      <chain>.000000052113.jsonl
      <chain>.lock                     held (flock) by the one process writing <chain>

Closed segments sort by name in chain order, the open one comes last, so search and
verify read a chain front to back without an index. The open segment is opened with
`O_DSYNC`, so a batch is one `write` that returns once the data is on disk (as
`write` + `fdatasync` would, with one system call fewer: each one on a durable call's
path also means taking the GIL back). A process
killed in the middle of a write can leave a last line without its newline; such a
batch was never acknowledged, so `head` cuts it off when the chain is opened again.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdp.audit.record import DecisionRecord, RecordError, parse_line
from pdp.audit.sink import ChainHead, SinkError

log = logging.getLogger("pdp.audit")

SUFFIX = ".jsonl"
CHAIN_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_SEGMENT_RE = re.compile(r"^([A-Za-z0-9_-]{1,100})(?:\.(\d{12}))?\.jsonl$")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 86_400  # a new segment each UTC day


HEAD_SUFFIX = ".head"
# `seq hash`, padded to a fixed width so that each update is one small `pwrite` at
# offset 0 over the same bytes: a crash leaves the old head or the new one.
_HEAD_WIDTH = 20 + 1 + 64


def head_path(directory: Path, chain: str) -> Path:
    """Where the chain's last written (seq, hash) is kept, beside its segments."""
    return directory / f"{chain}{HEAD_SUFFIX}"


def read_head(directory: Path, chain: str) -> ChainHead | None:
    """The head a chain's writer last recorded; None when there is no head file.

    Verify compares it with the log's last record: records cut from the end of a log
    leave a hash chain that is intact, but shorter than its head says.
    """
    try:
        text = head_path(directory, chain).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SinkError(f"cannot read the head of chain `{chain}`: {exc}") from None
    if not text.strip(" \n\0"):
        # Created, then a crash before its first write reached the disk (older versions
        # did not sync it): nothing was recorded, which is not a broken head.
        log.warning("the head file of chain `%s` is empty: ignored", chain)
        return None
    seq, _, digest = text.strip().partition(" ")
    if not seq.isdigit() or len(digest) != 64:
        raise SinkError(f"the head file of chain `{chain}` is not `seq hash`: {text[:100]!r}")
    return ChainHead(int(seq), digest)


def check_chain(name: str) -> str:
    """A chain name usable as a file name; ValueError otherwise."""
    if not CHAIN_RE.match(name):
        raise ValueError(f"`{name}` is not a chain name: use 1 to 100 letters, digits, `-` or `_`")
    return name


def safe_chain(text: str) -> str:
    """`text` (e.g. a host name) made into a chain name."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:100]
    return cleaned or "pdp"


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    chain: str
    first_seq: int | None  # None for the open segment


def segments(path: str | Path) -> dict[str, list[Segment]]:
    """Chain → its segments in chain order, for an audit directory or a single file.

    A file given directly is read on its own (a copy, a segment someone moved), as
    the chain its name says, or `-` when the name is not a segment name.
    """
    p = Path(path)
    if p.is_file():
        m = _SEGMENT_RE.match(p.name)
        chain = m.group(1) if m else "-"
        return {chain: [Segment(p, chain, int(m.group(2)) if m and m.group(2) else None)]}
    if not p.is_dir():
        raise FileNotFoundError(f"no audit log at {p} (no such file or directory)")
    found: dict[str, list[Segment]] = {}
    for child in p.iterdir():
        m = _SEGMENT_RE.match(child.name)
        if m and child.is_file():
            seq = int(m.group(2)) if m.group(2) else None
            found.setdefault(m.group(1), []).append(Segment(child, m.group(1), seq))
    for segs in found.values():
        # Closed segments by first seq, the open one last.
        segs.sort(key=lambda s: (s.first_seq is None, s.first_seq or 0))
    return dict(sorted(found.items()))


def read_lines(path: Path, *, complete_only: bool = True) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line; a last line without newline is skipped.

    A last line without its newline is a batch still being written (or one that a
    crash cut, which the writer removes when it reopens the chain): not a record yet.
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                if complete_only:
                    return
            yield n, raw.rstrip(b"\r\n").decode("utf-8", "replace")


def read_blocks(
    path: Path, *, reverse: bool = False, size: int = 4 << 20
) -> Iterator[tuple[int, bytes]]:
    """Blocks of whole lines, each line ending in a newline, with the number of its
    first line (from 1): front to back, or back to front with `reverse`.

    Searching works on blocks so that finding a value is one C-speed `find` over
    megabytes, not a Python step per line. Bytes after the last newline (a batch
    being written) are left out.
    """
    with open(path, "rb") as f:
        if not reverse:
            n, carry = 1, b""
            while chunk := f.read(size):
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield n, data[:cut]
                    n += data.count(b"\n", 0, cut)
                carry = data[cut:]
            return
        total = offset = end = 0
        while chunk := f.read(size):
            found = chunk.count(b"\n")
            if found:
                total += found
                end = offset + chunk.rfind(b"\n") + 1  # just after the last newline
            offset += len(chunk)
        pos, carry, next_line = end, b"", total + 1
        while pos > 0:
            step = min(size, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + carry
            # The part before the first newline may be the end of an earlier line.
            cut = data.find(b"\n") + 1 if pos > 0 else 0
            if cut == 0 and pos > 0:  # no newline at all: one long line, read more
                carry = data
                continue
            block = data[cut:]
            carry = data[:cut]
            if block:
                next_line -= block.count(b"\n")
                yield next_line, block


class JsonlSink:
    """Appends sealed records to `<directory>/<chain>.jsonl`, rotating segments.

    `max_bytes`: start a new segment before a batch would grow the open one past this.
    `rotate_seconds`: start a new segment when a record falls in a later period
    (periods are aligned to the Unix epoch, so 86400 means each UTC day). One chain
    per sink; the chain is opened (and locked) by the first `head` call.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rotate_us = int(rotate_seconds * 1_000_000)
        self.chain: str | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._head_fd: int | None = None
        self._size = 0
        self._first_seq: int | None = None  # of the open segment
        self._period: int | None = None  # of the open segment's first record
        self._last = ChainHead(0, "")

    @property
    def active_path(self) -> Path:
        assert self.chain is not None
        return self.directory / f"{self.chain}{SUFFIX}"

    # --- the protocol -------------------------------------------------------------------

    def head(self, chain: str) -> ChainHead | None:
        check_chain(chain)
        if self.chain is not None and chain != self.chain:
            raise SinkError(f"this sink writes chain `{self.chain}`, not `{chain}`")
        try:
            self._open(chain)
            return self._find_head()
        except OSError as exc:
            # The files are opened again on the next try; the lock is kept, or another
            # process could start writing this chain meanwhile.
            self._close_files(keep_lock=True)
            raise SinkError(f"audit log {self.directory}: {_reason(exc)}") from None

    def write_batch(self, records: Sequence[DecisionRecord], lines: Sequence[str]) -> None:
        if self._fd is None:
            raise SinkError("the audit log is not open (head() was not called or failed)")
        if not records:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            if self._size and self._due(records[0], len(data)):
                self._rotate()
            start = self._size
            try:
                _write_all(self._fd, data)  # O_DSYNC: durable when it returns
            except OSError:
                # Leave no half batch behind: it will not be acknowledged.
                try:
                    os.ftruncate(self._fd, start)
                    os.fsync(self._fd)  # else a crash could bring the cut lines back
                except OSError:
                    self._fd_broken()
                raise
        except OSError as exc:
            raise SinkError(
                f"cannot write the audit log {self.active_path}: {_reason(exc)}"
            ) from None
        if not self._size:
            self._first_seq, self._period = records[0].seq, self._period_of(records[0])
        self._size = start + len(data)
        self._last = ChainHead(records[-1].seq, records[-1].hash)
        self._write_head(self._last)

    def _write_head(self, head: ChainHead) -> None:
        # After the records are written: the head never names a record that is not in
        # the log, so it only ever lags (after a crash), never gets ahead.
        text = f"{head.seq} {head.hash}".ljust(_HEAD_WIDTH) + "\n"
        try:
            created = False
            if self._head_fd is None:
                assert self.chain is not None
                path = head_path(self.directory, self.chain)
                created = not path.exists()
                self._head_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            os.pwrite(self._head_fd, text.encode("ascii"), 0)
            if created:
                # Once per chain: a crash must not leave an empty head file behind.
                os.fsync(self._head_fd)
                _fsync_dir(self.directory)
        except OSError as exc:  # the records are stored; only the truncation check weakens
            log.warning("cannot update the head of chain %s: %s", self.chain, _reason(exc))

    def close(self) -> None:
        self._close_files()

    # --- steps --------------------------------------------------------------------------

    def _open(self, chain: str) -> None:
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            fd = os.open(self.directory / f"{chain}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SinkError(
                    f"audit log {self.directory / (chain + SUFFIX)} is being written by another "
                    "process; give each server (and each worker) its own chain or directory"
                ) from None
            self._lock_fd = fd
        self.chain = chain
        self._fd = _open_segment(self.active_path)
        # The file's directory entry must be on disk too, or a power loss could take the
        # file, with records already acknowledged, away with it. Always, not only when
        # created here: opening again after a failed rotation must make it durable too.
        _fsync_dir(self.directory)
        self._size = os.fstat(self._fd).st_size
        self._repair()

    def _repair(self) -> None:
        """Cut a last line that has no newline: a batch that a crash interrupted."""
        assert self._fd is not None
        if not self._size:
            return
        tail_len = min(self._size, 1 << 20)
        tail = os.pread(self._fd, tail_len, self._size - tail_len)
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = (self._size - tail_len + cut + 1) if cut >= 0 else 0
        if cut < 0 and tail_len < self._size:
            raise SinkError(f"{self.active_path}: last line longer than 1 MiB and unfinished")
        log.warning(
            "audit log %s: removing %d bytes of a record that was being written when the "
            "process stopped (it was never acknowledged)",
            self.active_path,
            self._size - keep,
        )
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        self._size = keep

    def _find_head(self) -> ChainHead | None:
        """The last record of the open segment, or of the newest closed one."""
        assert self.chain is not None
        first = _first_record(self.active_path)
        if first is not None:
            self._first_seq, self._period = first.seq, self._period_of(first)
        last = _last_record(self.active_path)
        if last is None:
            closed = [s for s in segments(self.directory).get(self.chain, []) if s.first_seq]
            if closed:
                last = _last_record(closed[-1].path)
        recorded = read_head(self.directory, self.chain)
        if recorded is not None and (last is None or last.seq < recorded.seq):
            # Records were cut from the end (or a segment deleted). Carry on from the
            # recorded head, so the gap stays in the chain for verify to name.
            log.error(
                "audit chain %s ends at seq %s but seq %s was written: records were "
                "removed from the end; continuing after seq %s",
                self.chain,
                last.seq if last is not None else 0,
                recorded.seq,
                recorded.seq,
            )
            self._last = recorded
            return self._last
        if last is None:
            return None
        self._last = ChainHead(last.seq, last.hash)
        return self._last

    def _period_of(self, record: DecisionRecord) -> int:
        return record.time_us // self.rotate_us if self.rotate_us > 0 else 0

    def _due(self, first: DecisionRecord, incoming: int) -> bool:
        if self._size + incoming > self.max_bytes:
            return True
        return self._period is not None and self._period_of(first) != self._period

    def _rotate(self) -> None:
        assert self._fd is not None and self._first_seq is not None
        closed = self.directory / f"{self.chain}.{self._first_seq:012d}{SUFFIX}"
        if closed.exists():
            raise SinkError(f"cannot rotate the audit log: {closed} exists already")
        os.fsync(self._fd)
        fd, self._fd = self._fd, None
        os.close(fd)
        os.rename(self.active_path, closed)
        # From here the open segment is a new, empty one, whatever fails next: state
        # left from the closed one would make every later write rotate onto it again.
        self._size = 0
        self._first_seq = self._period = None
        try:
            self._fd = _open_segment(self.active_path)
            _fsync_dir(self.directory)  # the rename and the new file's entry
        except OSError:
            self._fd_broken()  # the next head() opens it again, and syncs the directory
            raise
        log.info("audit log rotated: %s", closed.name)

    def _fd_broken(self) -> None:
        # A write failed and so did undoing it: reopen on the next head() (which the
        # writer calls after a failure) so that the half batch is found and cut.
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _close_files(self, keep_lock: bool = False) -> None:
        for fd in (self._fd, self._head_fd, None if keep_lock else self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._head_fd = None
        if not keep_lock:
            self._lock_fd = None


def _open_segment(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_DSYNC, 0o640)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_record(path: Path) -> DecisionRecord | None:
    if not path.exists():
        return None
    for _, line in read_lines(path):
        return _parse_for_head(path, line)
    return None


def _last_record(path: Path) -> DecisionRecord | None:
    """The last complete line of `path`, read from the end (segments can be large)."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        block = 64 * 1024
        buf = b""
        pos = end
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            body = buf[:-1] if buf.endswith(b"\n") else buf
            nl = body.rfind(b"\n")
            if nl >= 0 or pos == 0:
                line = body[nl + 1 :] if nl >= 0 else body
                if not line.strip():
                    return None
                return _parse_for_head(path, line.decode("utf-8", "replace"))
    return None


def _parse_for_head(path: Path, line: str) -> DecisionRecord:
    try:
        return parse_line(line)[0]
    except RecordError as exc:
        raise SinkError(
            f"{path}: the last record is not valid ({exc}), so the chain cannot be "
            "continued; `pdp audit verify` shows what is wrong"
        ) from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)
