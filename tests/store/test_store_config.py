"""Store URLs and settings: drivers filled in, passwords never shown, clear refusals."""

from __future__ import annotations

import pytest

from pdp.store.config import DEFAULT_URL, StoreConfig, parse_url, redact, resolve_url
from pdp.store.errors import InvalidInput


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///pdp.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_supported_urls(given: str, driver: str) -> None:
    assert parse_url(given).drivername == driver


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://root:hunter2@h/db", "unsupported database `mysql` in `mysql://root:***@h/db`"),
        ("not a url", "`not a url` is not a database URL"),
        ("::pg:hunter2@x", "is not a database URL"),
        ("sqlite+aiosqlite:///x.db", "unsupported SQLite driver"),
    ],
)
def test_refused_urls_never_show_the_password(given: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_url(given)
    assert message in info.value.message
    assert "hunter2" not in info.value.message


def test_redact() -> None:
    assert redact("postgresql+psycopg://pdp:s3cret@db:5432/pdp") == (
        "postgresql+psycopg://pdp:***@db:5432/pdp"
    )
    assert redact("postgresql://pdp@db/pdp") == "postgresql://pdp@db/pdp"
    # libpq takes passwords as query parameters too.
    assert redact("postgresql://db/pdp?user=pdp&password=s3cret&sslpassword=k3y") == (
        "postgresql://db/pdp?password=***&sslpassword=***&user=pdp"  # keys sorted
    )
    assert "s3cret" not in redact("postgres ql://db/pdp?password=s3cret")


def test_the_url_comes_from_flag_then_environment_then_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PDP_DB_URL", raising=False)
    assert resolve_url() == DEFAULT_URL == "sqlite:///pdp.db"
    assert resolve_url(None, {"url": "sqlite:///c.db"}) == "sqlite:///c.db"
    monkeypatch.setenv("PDP_DB_URL", "sqlite:///env.db")
    assert resolve_url(None, {"url": "sqlite:///c.db"}) == "sqlite:///env.db"
    assert resolve_url("sqlite:///flag.db", {"url": "sqlite:///c.db"}) == "sqlite:///flag.db"


def test_store_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDP_DB_URL", raising=False)
    cfg = StoreConfig.from_mapping({"url": "sqlite:///x.db", "poll_interval": 0.5})
    assert (cfg.url, cfg.poll_interval, cfg.max_staleness) == ("sqlite:///x.db", 0.5, 30.0)
    with pytest.raises(InvalidInput, match="unknown store setting"):
        StoreConfig.from_mapping({"pool": 3})
    with pytest.raises(InvalidInput, match="positive number of seconds"):
        StoreConfig.from_mapping({"max_staleness": 0})
