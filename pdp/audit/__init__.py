"""Decision records: building them, writing them (batched, durable, hash-chained),
reading them back (search, stats, tail) and verifying the chain.

The engine knows nothing of this package: the server builds a `DecisionRecord`
after each decision and hands it to an `AuditWriter`, which writes to the
`DecisionSink` chosen at start-up (`JsonlSink`, `SqlSink` in `pdp.audit.sql`, or
`MemorySink` for tests). See docs/audit.md.
"""

from __future__ import annotations

from pdp.audit.jsonl import JsonlSink
from pdp.audit.query import Filter, Page, Problem, QueryError, Stats, make_filter
from pdp.audit.read import AuditSource, JsonlSource, MemorySource, open_source
from pdp.audit.record import (
    AuditConfig,
    ConfigError,
    DecisionRecord,
    Reason,
    RecordError,
    build_record,
)
from pdp.audit.sink import ChainHead, DecisionSink, MemorySink, SinkError
from pdp.audit.verify import Report, verify
from pdp.audit.writer import AuditWriter, Ticket, WriterStats

__all__ = [
    "AuditConfig",
    "AuditSource",
    "AuditWriter",
    "ChainHead",
    "ConfigError",
    "DecisionRecord",
    "DecisionSink",
    "Filter",
    "JsonlSink",
    "JsonlSource",
    "MemorySink",
    "MemorySource",
    "Page",
    "Problem",
    "QueryError",
    "Reason",
    "RecordError",
    "Report",
    "SinkError",
    "Stats",
    "Ticket",
    "WriterStats",
    "build_record",
    "make_filter",
    "open_source",
    "verify",
]
