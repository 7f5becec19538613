"""What `pdp apikeys`, `pdp sessions` and `pdp tokens` share: durations, subjects, states."""

from __future__ import annotations

import re
from datetime import timedelta

from pdp.store import validate as v

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `7d`, `2w` → a timedelta; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"`{text}` is not a duration; write e.g. 90s, 30m, 1h, 7d, 2w")
    try:
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    except (OverflowError, ValueError):  # more days than a timedelta holds
        raise ValueError(f"`{text}` is longer than any time the store holds") from None


def subject_parts(text: str) -> tuple[str, str]:
    """`type:id` → (type, id), validated as the store validates subjects."""
    kind, _, ident = v.subject_key(text).partition(":")
    return kind, ident


def duration_text(d: timedelta) -> str:
    """A timeout for people: `30m`, `2h`, `90s`."""
    s = int(d.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"
