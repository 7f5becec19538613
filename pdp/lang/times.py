"""Times as policies, bindings and tests write them: ISO 8601, UTC when no zone is given."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

# The RFC 3339 shape: a date, then optionally a time and a zone. Python's own parser
# also takes week dates, basic forms and stranger strings (4,096 ones are a date in
# the year 1111): in a policy, a malformed time must be an error, never a date.
_TIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[Zz]|[+-]\d{2}:\d{2})?)?"
)


def parse_time(text: str) -> datetime:
    """`2026-11-26`, `2026-11-26T09:00:00Z` or with an offset → an aware datetime.

    No zone means UTC. ValueError when the text is not of that shape or not a real time.
    """
    if not _TIME_RE.fullmatch(text):
        raise ValueError(f"Invalid isoformat string: {text[:40]!r}")
    value = datetime.fromisoformat(text.upper() if "t" in text or "z" in text else text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def to_time(value: object) -> datetime:
    """A datetime, date (midnight UTC) or ISO 8601 string → an aware datetime.

    YAML turns unquoted timestamps into datetimes and dates, so files accept all three.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        return parse_time(value)
    raise ValueError(f"`{value}` is not a time")
