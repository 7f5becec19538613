"""What the review commands ask for: filters, time expressions, pages, statistics.

Filters are `FIELD=VALUE` terms; a field given twice matches either value, different
fields must all match. Time ranges take a duration back from now (`30s`, `15m`,
`2h`, `7d`, `2w`) or an ISO 8601 time (UTC when no zone is given).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pdp.audit.record import DecisionRecord, format_time, parse_iso, to_us


class QueryError(ValueError):
    """A filter, time expression or cursor that cannot be used; one line for people."""


# field → what it matches, for help texts. Every source supports all of them.
FIELDS: dict[str, str] = {
    "subject": "`type:id`, or an id of any type",
    "subject.type": "subject type",
    "subject.id": "subject id",
    "action": "action name",
    "resource": "`type/id`",
    "resource.type": "resource type",
    "resource.id": "resource id",
    "decision": "`allow` or `deny`",
    "caller": "the calling service's identity",
    "rule": "a rule id among the reasons",
    "policy_version": "the policy version that decided",
    "bindings_version": "the role store revision",
    "chain": "the writer's chain",
    "decision_id": "one decision",
    "authn.result": "`ok`, `failed` or `anonymous` (calls that carried a credential)",
    "authn.cause": "why authentication failed, e.g. `token_expired`, `no_credential`",
    "authn.method": "`bearer`, `apikey` or `session`",
    "http.route": "the Envoy route that matched",
    "http.method": "the HTTP method of an Envoy check",
    "http.host": "the HTTP host of an Envoy check",
}

# The fields inside the optional `authn` and `http` sections (record schema v2).
SECTION_FIELDS = frozenset(k for k in FIELDS if k.startswith(("authn.", "http.")))


@dataclass(frozen=True)
class Filter:
    """Conditions on records: `terms` (field → accepted values) and a time range.

    `since_us` is inclusive, `until_us` exclusive (microseconds since the epoch).
    """

    terms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    since_us: int | None = None
    until_us: int | None = None

    def in_range(self, time_us: int) -> bool:
        if self.since_us is not None and time_us < self.since_us:
            return False
        return self.until_us is None or time_us < self.until_us

    def matches(self, r: DecisionRecord) -> bool:
        if not self.in_range(r.time_us):
            return False
        for name, values in self.terms.items():
            if not any(_match(name, v, r) for v in values):
                return False
        return True

    def needles(self) -> list[tuple[str, ...]]:
        """For a fast scan: per term, strings one of which must occur in a matching line."""
        out: list[tuple[str, ...]] = []
        for name, values in self.terms.items():
            if name == "decision":
                out.append(tuple(f'"decision":"{v}"' for v in values))
            elif name in ("subject", "resource"):
                sep = ":" if name == "subject" else "/"
                out.append(tuple(_json_str(v.split(sep, 1)[-1]) for v in values))
            else:
                out.append(tuple(_json_str(v) for v in values))
        return out


def _json_str(v: str) -> str:
    return json.dumps(v, ensure_ascii=False)


def _match(name: str, value: str, r: DecisionRecord) -> bool:
    if name == "subject":
        kind, sep, ident = value.partition(":")
        return (r.subject_type == kind and r.subject_id == ident) if sep else r.subject_id == value
    if name == "resource":
        kind, _, ident = value.partition("/")
        return r.resource_type == kind and r.resource_id == ident
    if name == "rule":
        return any(x.rule == value for x in r.reasons)
    if name == "decision":
        return r.decision == value
    if name in SECTION_FIELDS:
        section, _, key = name.partition(".")
        values = r.authn if section == "authn" else r.http
        return values is not None and values.get(key) == value
    return bool(_FIELD_VALUE[name](r) == value)


_FIELD_VALUE = {
    "subject.type": lambda r: r.subject_type,
    "subject.id": lambda r: r.subject_id,
    "action": lambda r: r.action,
    "resource.type": lambda r: r.resource_type,
    "resource.id": lambda r: r.resource_id,
    "caller": lambda r: r.caller,
    "policy_version": lambda r: r.policy_version,
    "bindings_version": lambda r: r.bindings_version,
    "chain": lambda r: r.chain,
    "decision_id": lambda r: r.decision_id,
}


def parse_terms(terms: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """`FIELD=VALUE` strings → field → values; QueryError for an unknown field or bad value."""
    out: dict[str, list[str]] = {}
    for term in terms:
        name, sep, value = term.partition("=")
        name = name.strip()
        if not sep:
            raise QueryError(
                f"`{term}` is not a filter; write FIELD=VALUE, e.g. subject=user:alice"
            )
        if name not in FIELDS:
            raise QueryError(f"unknown field `{name}`{_hint(name)}; fields: {', '.join(FIELDS)}")
        if not value:
            raise QueryError(f"`{term}`: the value is empty")
        if name == "decision" and value not in ("allow", "deny"):
            raise QueryError(f"`{term}`: decision is `allow` or `deny`")
        if name == "resource" and "/" not in value:
            raise QueryError(f"`{term}`: write resource=TYPE/ID, e.g. resource=document/42")
        out.setdefault(name, []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, list(FIELDS), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time_expr(text: str, now: datetime | None = None, *, option: str = "time") -> int:
    """`2h` (that long before now), `now`, or ISO 8601 → microseconds since the epoch."""
    t = text.strip()
    now = now or datetime.now(UTC)
    try:
        m = _DURATION_RE.match(t)
        if t == "now":
            us = to_us(now)
        elif m:
            us = to_us(now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
        else:
            us = to_us(parse_iso(t.replace("Z", "+00:00") if t.endswith("Z") else t))
    except OverflowError:
        us = _LAST_US + 1  # out of range, said below
    except ValueError:
        raise QueryError(
            f"{option}: `{text}` is not a time; write a duration back from now (30m, 2h, "
            "7d) or an ISO 8601 time (2026-11-26 or 2026-11-26T12:00:00Z)"
        ) from None
    if not _FIRST_US <= us <= _LAST_US:
        raise QueryError(f"{option}: `{text}` is out of range (years 1 to 9999, in UTC)")
    return us


# Times must stay printable as ISO 8601 in UTC (a zone can push 9999-12-31 past it).
_FIRST_US = to_us(datetime(1, 1, 2, tzinfo=UTC))
_LAST_US = to_us(datetime(9999, 12, 30, tzinfo=UTC))


def make_filter(
    terms: Iterable[str] = (),
    *,
    since: str | None = None,
    start: str | None = None,
    end: str | None = None,
    now: datetime | None = None,
) -> Filter:
    """A filter from CLI text: `terms`, `--since`, `--from` and `--to`."""
    if since is not None and start is not None:
        raise QueryError("--since and --from both say where the range starts; give one")
    lo = parse_time_expr(since, now, option="--since") if since is not None else None
    if start is not None:
        lo = parse_time_expr(start, now, option="--from")
    hi = parse_time_expr(end, now, option="--to") if end is not None else None
    if lo is not None and hi is not None and hi <= lo:
        raise QueryError("the time range is empty: --to is not after the start")
    return Filter(parse_terms(terms), lo, hi)


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """A line or row that could not be read; search skips it and says so."""

    where: str  # `file:line`, or `table row`
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Page:
    """One page of search results, newest first, and how to ask for the next."""

    records: list[DecisionRecord]
    next_cursor: str | None
    problems: list[Problem]


@dataclass
class Stats:
    """Counts over the records that matched."""

    total: int = 0
    first_us: int | None = None
    last_us: int | None = None
    by_decision: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    by_resource_type: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    denied_subjects: Counter[str] = field(default_factory=Counter)
    denied_rules: Counter[str] = field(default_factory=Counter)
    # Calls whose credential was refused, by the cause only the audit log knows.
    authn_failures: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def add(self, r: DecisionRecord) -> None:
        self.total += 1
        t = r.time_us
        self.first_us = t if self.first_us is None else min(self.first_us, t)
        self.last_us = t if self.last_us is None else max(self.last_us, t)
        self.by_decision[r.decision] += 1
        self.by_action[r.action] += 1
        self.by_resource_type[r.resource_type] += 1
        for reason in r.reasons:
            self.by_rule[reason.rule] += 1
        if not r.allowed:
            # "" when no subject was established (printed as "-"), not ":".
            self.denied_subjects[r.subject if r.subject_type else ""] += 1
            for reason in r.reasons:
                self.denied_rules[reason.rule] += 1
        if r.authn is not None and r.authn.get("result") == "failed":
            self.authn_failures[str(r.authn.get("cause", ""))] += 1

    def to_json(self, top: int) -> dict[str, object]:
        return {
            "total": self.total,
            "first": format_time(self.first_us) if self.first_us is not None else None,
            "last": format_time(self.last_us) if self.last_us is not None else None,
            "by_decision": dict(ranked(self.by_decision)),
            "by_action": dict(ranked(self.by_action)),
            "by_resource_type": dict(ranked(self.by_resource_type)),
            "by_rule": dict(ranked(self.by_rule)),
            "top_denied_subjects": [
                {"subject": s, "count": n} for s, n in ranked(self.denied_subjects, top)
            ],
            "top_denied_rules": [
                {"rule": s, "count": n} for s, n in ranked(self.denied_rules, top)
            ],
            "authn_failures_by_cause": dict(ranked(self.authn_failures)),
            "problems": [str(p) for p in self.problems],
        }


def ranked(counter: Counter[str], top: int | None = None) -> list[tuple[str, int]]:
    """Most common first, ties by name: the same order from every source."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return items if top is None else items[:top]
