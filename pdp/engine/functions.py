"""Implementations of the built-in functions; signatures live in `pdp.lang.functions`.

Each takes the evaluated arguments and checks their runtime types, since request
attributes are untyped JSON.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pdp.engine.errors import EvalError, type_error
from pdp.lang.times import parse_time

Impl = Callable[..., Any]


def _str(fn: str, v: object) -> str:
    if not isinstance(v, str):
        raise type_error(f"`{fn}` needs a string", v)
    return v


def _time(fn: str, v: object) -> datetime:
    if not isinstance(v, datetime):
        raise type_error(f"`{fn}` needs a time (use `time(...)`)", v)
    return v


def startswith(s: object, prefix: object) -> bool:
    return _str("startswith", s).startswith(_str("startswith", prefix))


def endswith(s: object, suffix: object) -> bool:
    return _str("endswith", s).endswith(_str("endswith", suffix))


def lower(s: object) -> str:
    return _str("lower", s).lower()


def upper(s: object) -> str:
    return _str("upper", s).upper()


def size(v: object) -> int:
    if isinstance(v, str | list | tuple | dict):
        return len(v)
    raise type_error("`size` needs a string, list or record", v)


def ip_address(v: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return _parse_ip(_str("in_cidr", v))
    except ValueError:
        raise EvalError("invalid_value", f"`{v}` is not an IP address") from None


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Callers repeat: the same few client addresses ask again and again.
    return ipaddress.ip_address(text)


def network(v: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str("in_cidr", v), strict=False)
    except ValueError:
        raise EvalError("invalid_value", f"`{v}` is not a network such as `10.0.0.0/8`") from None


def in_cidr(ip: object, cidr: object) -> bool:
    net = cidr if isinstance(cidr, ipaddress.IPv4Network | ipaddress.IPv6Network) else network(cidr)
    addr = ip_address(ip)
    if addr.version == 6 and net.version == 4 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # `::ffff:10.0.0.1` is the IPv4 client 10.0.0.1
    return addr.version == net.version and addr in net


def is_ip(v: object) -> bool:
    try:
        ipaddress.ip_address(_str("is_ip", v))
    except ValueError:
        return False
    return True


def time(v: object) -> datetime:
    if isinstance(v, datetime):
        return v
    try:
        return parse_time(_str("time", v))
    except ValueError:
        raise EvalError("invalid_value", f"`{v}` is not an ISO 8601 time") from None


def hour(t: object) -> int:
    return _time("hour", t).astimezone(UTC).hour


def weekday(t: object) -> int:
    return _time("weekday", t).astimezone(UTC).isoweekday()


def days_between(a: object, b: object) -> float:
    return (_time("days_between", b) - _time("days_between", a)).total_seconds() / 86400


# `now` is special: it reads the request, so the compiler handles it.
FUNCTIONS: dict[str, Impl] = {
    "startswith": startswith,
    "endswith": endswith,
    "lower": lower,
    "upper": upper,
    "size": size,
    "in_cidr": in_cidr,
    "is_ip": is_ip,
    "time": time,
    "hour": hour,
    "weekday": weekday,
    "days_between": days_between,
}
