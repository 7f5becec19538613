"""The built-in functions' signatures: what validation checks calls against.

Implementations live in `pdp.engine.functions`; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signature:
    params: tuple[str, ...]  # type names, see pdp.lang.types
    returns: str
    doc: str


FUNCTIONS: dict[str, Signature] = {
    "startswith": Signature(("string", "string"), "bool", "`s` starts with `prefix`"),
    "endswith": Signature(("string", "string"), "bool", "`s` ends with `suffix`"),
    "lower": Signature(("string",), "string", "`s` in lower case"),
    "upper": Signature(("string",), "string", "`s` in upper case"),
    "size": Signature(("any",), "int", "length of a string or list"),
    "in_cidr": Signature(
        ("string", "string"), "bool", "IP address `ip` lies in network `cidr` (IPv4 or IPv6)"
    ),
    "is_ip": Signature(("string",), "bool", "`s` is a valid IPv4 or IPv6 address"),
    "time": Signature(("string",), "time", "an ISO 8601 timestamp; without a zone, UTC"),
    "now": Signature((), "time", "the time of the request (fixed in policy tests)"),
    "hour": Signature(("time",), "int", "the hour (0-23, UTC) of a time"),
    "weekday": Signature(("time",), "int", "the day of the week of a time, Monday = 1"),
    "days_between": Signature(("time", "time"), "float", "days from the first time to the second"),
}
