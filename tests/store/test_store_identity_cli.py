"""`pdp apikeys`, `pdp sessions`, `pdp tokens` through `pdp.cli.main.main`, on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pdp.cli.main import main
from pdp.identity.apikeys import ApiKeyResolver, KeyHasher
from pdp.identity.result import AuthnFailure, Cause, Identity
from pdp.identity.sessions import SessionResolver, Sessions
from pdp.store.identity import SqlApiKeys, SqlSessions, SqlTokenRevocations
from pdp.store.sql import SqlStore

PEPPER = "a-test-pepper-that-is-long-enough-0123456789"


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], url: str) -> None:
        self.capsys = capsys
        self.url = url

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--db", self.url])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *argv: str) -> object:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], store_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("PDP_APIKEY_PEPPER", PEPPER)
    monkeypatch.delenv("PDP_ACTOR", raising=False)
    return Cli(capsys, store_url)


def now() -> datetime:
    return datetime.now(UTC)


def test_apikeys_create_list_rotate_revoke(cli: Cli, store_url: str) -> None:
    code, out, err = cli(
        "apikeys",
        "create",
        "service:indexer",
        "--name",
        "nightly",
        "--scope",
        "documents:read",
        "--scope",
        "documents:write",
        "--expires",
        "30d",
        "--by",
        "ops",
    )
    assert code == 0, err
    key = out.strip()
    assert key.startswith("pdp_") and len(out.splitlines()) == 1  # stdout: the key alone
    prefix = key.split("_")[1]
    assert f"prefix {prefix}" in err and "only time the key is shown" in err
    assert PEPPER not in out + err

    with SqlStore(store_url) as store:
        resolver = ApiKeyResolver(SqlApiKeys(store), KeyHasher(PEPPER.encode()))
        ident = resolver.resolve(key, now())
        assert isinstance(ident, Identity) and ident.subject.key == "service:indexer"

    rows = cli.json("apikeys", "list")
    assert isinstance(rows, list) and len(rows) == 1
    (row,) = rows
    assert row["prefix"] == prefix and row["state"] == "active"
    assert row["scopes"] == ["documents:read", "documents:write"]
    assert row["created_by"] == "ops" and row["last_used_at"] is not None
    assert "digest" not in row and "key" not in row
    code, out, _ = cli("apikeys", "list", "--subject", "service:indexer")
    assert code == 0 and prefix in out and "1 key(s)" in out and key not in out

    rotated = cli.json("apikeys", "rotate", f"pdp_{prefix}_…", "--overlap", "0s")
    assert isinstance(rotated, dict) and rotated["replaces"] == prefix
    new_key, new_prefix = rotated["key"], rotated["prefix"]
    assert rotated["scopes"] == ["documents:read", "documents:write"]
    with SqlStore(store_url) as store:
        resolver = ApiKeyResolver(SqlApiKeys(store), KeyHasher(PEPPER.encode()))
        old = resolver.resolve(key, now() + timedelta(seconds=1))
        assert isinstance(old, AuthnFailure) and old.cause is Cause.KEY_ROTATED
        assert isinstance(resolver.resolve(new_key, now()), Identity)

    code, out, _ = cli("apikeys", "revoke", new_prefix)
    assert code == 0 and f"revoked API key pdp_{new_prefix}_" in out
    states = {r["prefix"]: r["state"] for r in cli.json("apikeys", "list")}  # type: ignore[union-attr,index]
    assert states == {prefix: "rotated", new_prefix: "revoked"}
    assert cli.json("apikeys", "list", "--active") == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["apikeys", "create", "indexer"], "`indexer` is not a subject"),
        (["apikeys", "create", "service:x", "--expires", "2020-01-01"], "is in the past"),
        (["apikeys", "create", "service:x", "--scope", "a b"], "scope `a b` must be"),
        (["apikeys", "revoke", "nope"], "`nope` is not an API key prefix"),
        (["apikeys", "revoke", "abcdefghijkl"], "no API key with prefix `abcdefghijkl`"),
        (["apikeys", "rotate", "abcdefghijkl"], "no API key with prefix `abcdefghijkl`"),
        (["apikeys", "rotate", "abcdefghijkl", "--overlap", "soon"], "`soon` is not a duration"),
        (["sessions", "revoke", "zz"], "`zz` is not a session handle"),
        (["sessions", "revoke", "0123456789abcdef"], "no session with handle"),
        (["tokens", "revoke", "--subject", "bob"], "`bob` is not a subject"),
        (["tokens", "revoke", "--subject", "user:bob", "--before", "1h"], "future"),
    ],
)
def test_errors_are_one_line(cli: Cli, argv: list[str], message: str) -> None:
    code, out, err = cli(*argv)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_apikeys_refuse_to_create_without_a_good_pepper(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PDP_APIKEY_PEPPER")
    code, _, err = cli("apikeys", "create", "service:x")
    assert code == 1 and "no API key pepper: set $PDP_APIKEY_PEPPER or pass --pepper-file" in err
    short = tmp_path / "short"
    short.write_text("tiny-secret\n")
    code, _, err = cli("apikeys", "create", "service:x", "--pepper-file", str(short))
    assert code == 1 and "is 11 bytes; it must be at least 32" in err and "tiny" not in err
    code, _, err = cli("apikeys", "create", "service:x", "--pepper-file", str(tmp_path / "none"))
    assert code == 1 and "cannot read the pepper file" in err
    good = tmp_path / "pepper"
    good.write_text(PEPPER + "\n")  # the newline `echo` adds is not part of it
    code, out, _ = cli("apikeys", "create", "service:x", "--pepper-file", str(good))
    assert code == 0 and out.startswith("pdp_")
    assert cli.json("apikeys", "list") != []  # listing needs no pepper


def test_sessions_list_revoke_purge(cli: Cli, store_url: str) -> None:
    t = now()
    with SqlStore(store_url) as store:
        sessions = Sessions(SqlSessions(store))
        sid_a1, a1 = sessions.create("user", "alice", now=t, properties={"tenant": "acme"})
        sid_a2, a2 = sessions.create("user", "alice", now=t)
        sid_b, b = sessions.create("user", "bob", now=t)
    rows = cli.json("sessions", "list", "--subject", "user:alice")
    assert isinstance(rows, list)
    by_handle = {r["handle"]: r for r in rows}
    assert [r["handle"] for r in rows] == sorted(by_handle) == sorted([a1.handle, a2.handle])
    assert by_handle[a1.handle]["properties"] == {"tenant": "acme"}
    assert by_handle[a2.handle]["idle_timeout_s"] == 1800
    assert by_handle[a2.handle]["state"] == "active"
    code, out, _ = cli("sessions", "list")
    assert code == 0 and "3 session(s)" in out and b.handle in out and "30m" in out

    code, out, _ = cli("sessions", "revoke", a1.handle)
    assert code == 0 and out.strip() == f"revoked session {a1.handle}"
    assert cli.json("sessions", "revoke", "--subject", "user:alice")["revoked"] == 1  # type: ignore[index]
    code, _, err = cli("sessions", "revoke")
    assert code == 2 and "give a session HANDLE or --subject" in err

    with SqlStore(store_url) as store:
        resolver = SessionResolver(SqlSessions(store))
        for sid in (sid_a1, sid_a2):
            failed = resolver.resolve(sid, now())
            assert isinstance(failed, AuthnFailure) and failed.cause is Cause.SESSION_REVOKED
        assert isinstance(resolver.resolve(sid_b, now()), Identity)

    assert cli.json("sessions", "purge", "--older-than", "1h")["deleted"] == 0  # type: ignore[index]
    code, out, _ = cli("sessions", "purge")
    assert code == 0 and "deleted 2 ended session(s)" in out
    assert [r["handle"] for r in cli.json("sessions", "list")] == [b.handle]  # type: ignore[union-attr,index]


def test_tokens_revoke_list_purge(cli: Cli, store_url: str) -> None:
    code, out, _ = cli(
        "tokens", "revoke", "--jti", "tok-1", "--issuer", "https://id.example.com", "--by", "sec"
    )
    assert code == 0 and out.strip() == "revoked token `tok-1` of `https://id.example.com`"
    code, out, _ = cli("tokens", "revoke", "--jti", "tok-1", "--issuer", "https://id.example.com")
    assert code == 0 and "already revoked; nothing changed" in out
    gone = (now() - timedelta(hours=1)).isoformat()
    assert cli.json("tokens", "revoke", "--jti", "tok-0", "--expires", gone)["changed"] is True  # type: ignore[index]
    data = cli.json("tokens", "revoke", "--subject", "user:mallory")
    assert isinstance(data, dict) and data["changed"] is True and data["subject"] == "user:mallory"

    listed = cli.json("tokens", "list")
    assert isinstance(listed, dict)
    assert [(t["jti"], t["issuer"], t["created_by"]) for t in listed["tokens"]] == [
        ("tok-1", "https://id.example.com", "sec"),
        ("tok-0", None, "cli:" + __import__("getpass").getuser()),
    ]
    assert [s["subject"] for s in listed["subjects"]] == ["user:mallory"]
    code, out, _ = cli("tokens", "list")
    assert code == 0 and "2 revoked token(s)" in out and "1 subject(s)" in out

    with SqlStore(store_url) as store:
        check = SqlTokenRevocations(store).checker("https://id.example.com")
        assert check("tok-1", "user:alice", now())
        assert check(None, "user:mallory", now() - timedelta(minutes=1))
        assert not check("tok-2", "user:alice", now())

    code, out, _ = cli("tokens", "purge")
    assert code == 0 and "deleted 1 revocation(s)" in out
    assert [t["jti"] for t in cli.json("tokens", "list")["tokens"]] == ["tok-1"]  # type: ignore[index]

    code, _, err = cli("tokens", "revoke")
    assert code == 2 and "give --jti JTI or --subject SUBJECT" in err
    code, _, err = cli("tokens", "revoke", "--jti", "x", "--subject", "user:a")
    assert code == 2


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("apikeys", "sessions", "tokens"):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert "exit codes: 0 success, 1 error" in capsys.readouterr().out
