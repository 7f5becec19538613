"""Where the store lives and how fresh its cache must be: URL handling and settings.

The URL comes from (first found) a `--db` flag, the `PDP_DB_URL` environment
variable, a config mapping (`store.url`), or the default `sqlite:///pdp.db`.
A password in it is never printed: every message shows `redact(url)`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pdp.store.errors import InvalidInput

DEFAULT_URL = "sqlite:///pdp.db"
ENV_URL = "PDP_DB_URL"

# For text that is not even a URL: everything from a colon to the `@` may be a password.
_PASSWORD_RE = re.compile(r":[^@\s]*@")
# libpq also takes a password as a query parameter (`?password=...`, `sslpassword=...`).
_QUERY_PASSWORD_RE = re.compile(r"(?i)(password=)[^&;\s]*")


def parse_url(text: str | URL) -> URL:
    """A database URL we support, with the driver filled in.

    `postgresql://` and `postgres://` mean psycopg 3 (the driver we ship); SQLite uses
    the standard library. Anything else is refused with a clear message.
    """
    if isinstance(text, URL):
        url = text
    else:
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
            raise InvalidInput(
                f"`{redact_text(text)}` is not a database URL; write e.g. `sqlite:///pdp.db` "
                "or `postgresql+psycopg://user@host:5432/db`"
            ) from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if url.get_driver_name() not in ("pysqlite", ""):
            raise InvalidInput(
                f"unsupported SQLite driver in `{redact(url)}`; use `sqlite:///FILE`"
            )
        if url.host or url.username or url.password or url.port:
            # `sqlite://tmp/x.db` reads as host `tmp`, file `x.db`: a slash too few.
            path = "/".join(p for p in (url.host or "", url.database or "") if p) or "FILE"
            what = f"names a host (`{url.host}`)" if url.host else "has a user or port"
            raise InvalidInput(
                f"`{redact(url)}` {what}, and a SQLite URL has none: write "
                f"`sqlite:///{path}` for a path relative to the working directory or "
                f"`sqlite:////{path}` for an absolute one"
            )
        return url
    raise InvalidInput(
        f"unsupported database `{backend}` in `{redact(url)}`; use `sqlite:///FILE` "
        "or `postgresql+psycopg://...`"
    )


def redact(url: str | URL) -> str:
    """The URL as text with its passwords (user info and query) replaced by `***`."""
    if isinstance(url, str):
        text = url
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            return redact_text(text)
    return _QUERY_PASSWORD_RE.sub(r"\1***", url.render_as_string(hide_password=True))


def redact_text(text: str) -> str:
    """Best effort for strings that are not even URLs: hide what looks like a password."""
    return _QUERY_PASSWORD_RE.sub(r"\1***", _PASSWORD_RE.sub(":***@", text))


def resolve_url(flag: str | None = None, config: Mapping[str, Any] | None = None) -> str:
    """The URL to use: the flag, then `PDP_DB_URL`, then `config['url']`, then the default."""
    if flag:
        return flag
    env = os.environ.get(ENV_URL)
    if env:
        return env
    if config and isinstance(config.get("url"), str):
        return str(config["url"])
    return DEFAULT_URL


@dataclass(frozen=True)
class StoreConfig:
    """Settings of the store and of a cache of it, for code that embeds them.

    `pdp serve` does not read this: its settings (`store.url`, `store.poll_interval`,
    `store.max_staleness`, `store.bindings_file`) are in `pdp.server.config`, and the
    other values here are the fixed defaults it runs with (docs/store.md).
    """

    url: str = DEFAULT_URL
    # How often the revision is polled (any database); LISTEN/NOTIFY is immediate.
    poll_interval: float = 1.0
    # How long cached lookups are still served while the database cannot be reached.
    max_staleness: float = 30.0
    cache_size: int = 100_000
    # Fail a connection attempt after this long rather than hang a request.
    connect_timeout: float = 5.0
    listen: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None = None) -> StoreConfig:
        """From a config section; unknown keys are refused, the URL goes through `resolve_url`."""
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInput("unknown store setting(s): " + ", ".join(f"`{k}`" for k in unknown))
        data["url"] = resolve_url(None, data)
        for key in ("poll_interval", "max_staleness", "connect_timeout"):
            if key in data and (not isinstance(data[key], int | float) or data[key] <= 0):
                raise InvalidInput(f"store setting `{key}` must be a positive number of seconds")
        return cls(**data)
