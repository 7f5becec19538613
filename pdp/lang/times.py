"""Times as policies, bindings and tests write them: ISO 8601, UTC when no zone is given."""

from __future__ import annotations

from datetime import UTC, date, datetime


def parse_time(text: str) -> datetime:
    """ISO 8601 text → an aware datetime; ValueError when malformed."""
    value = datetime.fromisoformat(text)
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
