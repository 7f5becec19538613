"""What the server uses: settings → sink and writer, and one call to record a decision.

The composition root (`pdp.server.app`) builds a `Recorder` from `AuditSettings`
once at start-up; the decision service builds the records of a call and calls
`Recorder.record` before answering. In `durable` mode that returns the reason the
records could not be stored, and the service then denies instead of answering
without a record.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdp.audit.jsonl import DEFAULT_MAX_BYTES, DEFAULT_ROTATE_SECONDS, JsonlSink, safe_chain
from pdp.audit.record import AuditConfig, DecisionRecord, RecordDraft
from pdp.audit.sink import DecisionSink
from pdp.audit.writer import MODES, AuditWriter, Mode, WriterStats

log = logging.getLogger("pdp.audit")

SINKS = ("none", "jsonl", "sql")
DEFAULT_DIR = "pdp-audit"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The `[audit]` settings of `pdp serve` (see docs/audit.md)."""

    sink: str = "jsonl"
    path: str = ""  # jsonl: the directory; "" = `pdp-audit` next to the SQLite store
    url: str = ""  # sql: the database URL
    table: str = "pdp_audit"
    mode: str = "durable"
    flush_interval: float = 0.2  # buffered: longest time a record waits to be written
    durable_timeout: float = 5.0  # durable: longest time a call waits for its record
    sample_allowed: float = 1.0  # the share of allowed decisions kept; denials: all
    include: tuple[str, ...] = ()  # attributes recorded: subject, action, resource, context
    redact: tuple[str, ...] = ()  # dotted paths replaced by "[redacted]"
    max_bytes: int = DEFAULT_MAX_BYTES  # jsonl: rotate before a segment grows past this
    rotate_seconds: float = DEFAULT_ROTATE_SECONDS  # jsonl: a new segment per period
    chain: str = ""  # "" = the host name (and `-w<N>` for worker N)
    buffer_limit: int = 100_000  # buffered: records held while the sink fails

    def check(self) -> AuditConfig:
        """The record config; ValueError naming the first bad setting."""
        if self.sink not in SINKS:
            raise ValueError(f"audit.sink must be one of {', '.join(SINKS)}")
        if self.mode not in MODES:
            raise ValueError(f"audit.mode must be one of {', '.join(MODES)}")
        if self.sink == "sql" and not self.url:
            raise ValueError('audit.url: the "sql" sink needs a database URL')
        if not 0.0 <= self.sample_allowed <= 1.0:
            raise ValueError("audit.sample_allowed must be between 0 and 1")
        return AuditConfig(include=frozenset(self.include), redact=self.redact)


def default_directory(store_url: str, bindings_file: str = "") -> Path:
    """`pdp-audit/` next to the SQLite store file (or the bindings file), else here."""
    if bindings_file:
        return Path(bindings_file).parent / DEFAULT_DIR
    prefix = "sqlite:///"
    if store_url.startswith(prefix) and store_url[len(prefix) :] not in ("", ":memory:"):
        return Path(store_url[len(prefix) :].split("?")[0]).parent / DEFAULT_DIR
    return Path(DEFAULT_DIR)


def default_chain(worker: int | None = None) -> str:
    """The host name as a chain name; `-w<N>` for worker N of `--workers`."""
    name = safe_chain(socket.gethostname())
    return f"{name}-w{worker}" if worker is not None else name


class Recorder:
    """The audit log as the decision service sees it."""

    def __init__(
        self,
        writer: AuditWriter,
        config: AuditConfig,
        *,
        durable_timeout: float = 5.0,
        sink_kind: str = "",
    ) -> None:
        self.writer = writer
        self.config = config
        self.sink_kind = sink_kind or type(writer.sink).__name__
        self.durable = writer.mode == "durable"
        self.durable_timeout = durable_timeout

    def record(self, records: Sequence[DecisionRecord | RecordDraft]) -> str | None:
        """Hand over the records of one call; None when that is enough to answer.

        `durable`: waits until they are stored, and returns why not when they are not
        (the caller then denies). `buffered`: returns None at once. A `RecordDraft` is
        built into its record by the writer (cheaper, and off this thread when buffered).
        Never raises: a bug in the audit path is a reason, so nothing is answered unrecorded.
        """
        try:
            ticket = self.writer.submit(records)
            if not self.durable or ticket.wait(self.durable_timeout):
                return None
            return ticket.error or UNSTORED
        except Exception as exc:
            return _failed(exc)

    async def record_async(self, records: Sequence[DecisionRecord | RecordDraft]) -> str | None:
        """As `record`, for a call answered on the running event loop: never blocks it.

        The records are written by the writer's thread; a durable call awaits them.
        """
        try:
            ticket = self.writer.submit(records, asyncio.get_running_loop())
            if not self.durable or await ticket.wait_async(self.durable_timeout):
                return None
            return ticket.error or UNSTORED
        except Exception as exc:
            return _failed(exc)

    @property
    def healthy(self) -> bool:
        return self.writer.healthy

    def stats(self) -> WriterStats:
        return self.writer.stats()

    def close(self, timeout: float = 10.0) -> None:
        self.writer.close(timeout)


UNSTORED = "the audit log did not store the record"


def _failed(exc: Exception) -> str:
    log.exception("audit recorder failed")
    return f"internal error in the audit log ({type(exc).__name__})"


def open_recorder(
    settings: AuditSettings,
    *,
    default_dir: Path,
    chain: str,
    on_health: Callable[[bool, str], None] | None = None,
    sink: DecisionSink | None = None,
) -> Recorder | None:
    """The recorder for `settings`, started; None for `sink = "none"`.

    `sink` replaces the configured one (tests, embedding). Opening the sink may fail
    (a database that is down): the writer then starts unhealthy and retries.
    """
    config = settings.check()
    if settings.sink == "none" and sink is None:
        return None
    kind = type(sink).__name__ if sink is not None else settings.sink
    if sink is None:
        if settings.sink == "sql":
            from pdp.audit.sql import SqlSink  # only the SQL sink needs SQLAlchemy here

            sink = SqlSink(settings.url, table=settings.table)
        else:
            directory = Path(settings.path) if settings.path else default_dir
            sink = JsonlSink(
                directory, max_bytes=settings.max_bytes, rotate_seconds=settings.rotate_seconds
            )
    mode: Mode = "durable" if settings.mode == "durable" else "buffered"
    writer = AuditWriter(
        sink,
        chain=settings.chain or chain,
        mode=mode,
        flush_interval=settings.flush_interval,
        buffer_limit=settings.buffer_limit,
        sample_allowed=settings.sample_allowed,
        on_health=on_health,
    )
    writer.start()
    where = getattr(sink, "directory", None) or getattr(sink, "description", type(sink).__name__)
    log.info("audit log: %s sink at %s, chain %s, %s", settings.sink, where, writer.chain, mode)
    return Recorder(writer, config, durable_timeout=settings.durable_timeout, sink_kind=kind)
