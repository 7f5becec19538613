"""Bad input to the store verbs: one clear line (or every problem of a file), never a
traceback, never an outage message, and nothing changed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pdp.cli.main import main
from pdp.store.sql import SqlStore
from tests.store.test_store_cli import Cli


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], store_url: str, policy_dir: Path) -> Cli:
    return Cli(capsys, store_url, policy_dir)


def revision(url: str) -> int:
    with SqlStore(url) as store:
        return store.revision()


# --- keys listed twice --------------------------------------------------------------

TWICE = """\
bindings:
  - {subject: user:x, role: viewer, role: admin}
bindings:
  - {subject: user:y, role: viewer}
"""


@pytest.mark.parametrize("flags", [[], ["--dry-run"], ["--replace"], ["--replace", "--dry-run"]])
def test_an_import_with_a_key_listed_twice_is_refused(
    cli: Cli, tmp_path: Path, store_url: str, flags: list[str]
) -> None:
    cli("bindings", "grant", "user:keep", "viewer")
    path = tmp_path / "b.yaml"
    path.write_text(TWICE, encoding="utf-8")
    code, out, err = cli("store", "import", str(path), *flags)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [
        f"{path}: line 2, column 37: key `role` is listed twice in one mapping (first at "
        "line 2, column 23); only the last would be read",
        f"{path}: line 3, column 1: key `bindings` is listed twice in one mapping (first at "
        "line 1, column 1); only the last would be read",
        f"error: {path}: 2 problem(s); nothing was imported",
    ]
    assert [b["subject"] for b in cli.json("bindings", "list")] == ["user:keep"]  # type: ignore[index,union-attr]
    assert revision(store_url) == 1


def test_a_json_import_with_a_key_listed_twice_is_refused(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(
        '{"bindings": [{"subject": "user:x", "role": "viewer", "role": "admin"}]}',
        encoding="utf-8",
    )
    code, _, err = cli("store", "import", str(path))
    assert code == 1
    assert f"{path}: line 1, column 55: key `role` is listed twice" in err
    assert cli.json("bindings", "list") == []


def test_pdp_check_reads_bindings_files_the_same_way(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_dir: Path
) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(TWICE, encoding="utf-8")
    request = tmp_path / "r.json"
    request.write_text(
        '{"subject": {"type": "user", "id": "y"}, "action": {"name": "read"},'
        ' "resource": {"type": "document", "id": "1"}}',
        encoding="utf-8",
    )
    code = main(
        ["check", "--policies", str(policy_dir), "--bindings", str(path), "--request", str(request)]
    )
    err = capsys.readouterr().err
    assert code != 0 and "key `bindings` is listed twice" in err and "Traceback" not in err


# --- --expires, --db ----------------------------------------------------------------


@pytest.mark.parametrize("when", ["999999999d", "99999999999999999999w", "9" * 5000 + "d"])
def test_an_expiry_past_year_9999_is_one_line_naming_expires(cli: Cli, when: str) -> None:
    code, out, err = cli("bindings", "grant", "user:alice", "viewer", "--expires", when)
    assert code == 1 and out == ""
    assert err.strip().startswith("error: --expires `")
    assert "is too far in the future: the store holds times up to the year 9999" in err
    code, _, err = cli(
        "bindings", "grant", "user:alice", "viewer", "--expires", "9999-12-31T23:00:00-05:00"
    )
    assert code == 1 and "is out of range: in UTC it falls outside the years 1 to 9999" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["sessions", "purge", "--older-than", "999999999d"],
            "error: --older-than `999999999d` reaches before the year 1",
        ),
        (
            ["sessions", "purge", "--older-than", "9" * 30 + "d"],
            "is longer than any time the store holds",
        ),
        (
            ["tokens", "revoke", "--subject", "user:a", "--before", "9" * 30 + "d"],
            "error: --before `",
        ),
    ],
)
def test_durations_past_any_time_are_one_line_naming_their_flag(
    cli: Cli, argv: list[str], message: str
) -> None:
    code, out, err = cli(*argv)
    assert code == 1 and out == "" and "Traceback" not in err
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bindings", "grant", "user:a", "viewer"],
        ["bindings", "revoke", "user:a", "viewer"],
        ["bindings", "list"],
        ["subjects", "set", "user:a", "x=1"],
        ["subjects", "show", "user:a"],
        ["groups", "add-member", "group:g", "user:a"],
        ["groups", "list"],
        ["store", "export"],
        ["db", "upgrade"],
        ["db", "current"],
    ],
)
def test_a_sqlite_url_with_a_host_is_one_clear_line_for_every_verb(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    policy_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--policies", str(policy_dir)] if argv[:2] == ["bindings", "grant"] else []
    assert main([*argv, "--db", "sqlite://tmp/x.db", *extra]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: `sqlite://tmp/x.db` names a host (`tmp`), and a SQLite URL has none: write "
        "`sqlite:///tmp/x.db` for a path relative to the working directory or "
        "`sqlite:////tmp/x.db` for an absolute one"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["policies"]  # no database made


# --- a database migrated by a newer pdp ---------------------------------------------


@pytest.fixture
def newer(store_url: str) -> Iterator[str]:
    """The store at a schema revision this pdp does not know (set back afterwards)."""
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
        yield store_url
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        engine.dispose()


def test_a_database_of_a_newer_pdp_says_upgrade_pdp(cli: Cli, newer: str) -> None:
    with SqlStore(newer, check_schema=False) as store:
        url = store.url
    message = (
        f"error: the database at {url} was migrated by a newer pdp (schema 0003); this pdp "
        "knows schemas up to 0002: upgrade pdp to use it (do not downgrade the database)"
    )
    for argv in (["bindings", "list"], ["store", "export"], ["db", "upgrade"]):
        code, out, err = cli(*argv)
        assert (code, out, err.strip()) == (1, "", message), argv
    code, out, _ = cli("db", "current")
    assert code == 0
    assert "schema 0003, from a newer pdp; this one knows schemas up to 0002" in out
    status = cli.json("db", "current")
    assert status["newer"] is True and status["current"] is False  # type: ignore[index,call-overload]


# --- ids too long, derived roles, every problem at once -------------------------------


def test_an_id_too_long_for_postgresql_is_bad_input_on_both_databases(
    cli: Cli, tmp_path: Path, store_url: str
) -> None:
    long_id = "user:" + "x" * 4000
    code, _, err = cli("bindings", "grant", long_id, "viewer")
    assert code == 1
    assert "is too long: 4,005 characters; the store takes at most 1,000 bytes" in err
    assert "cannot reach" not in err
    code, _, err = cli("bindings", "grant", "user:a", "viewer", "--scope", "document/" + "é" * 500)
    assert code == 1 and "scope `document/" in err and "(1,009 bytes of UTF-8)" in err
    code, _, err = cli("groups", "add-member", "group:g", long_id)
    assert code == 1 and "is too long" in err
    path = tmp_path / "b.yaml"
    path.write_text(f"bindings:\n  - {{subject: {long_id}, role: viewer}}\n", encoding="utf-8")
    code, _, err = cli("store", "import", str(path))
    assert code == 1 and "bindings[0].subject: subject `user:xxx" in err and "is too long" in err
    # The longest that is taken is taken by both databases.
    code, _, err = cli(
        "bindings", "grant", "user:" + "x" * 995, "viewer", "--scope", "d/" + "y" * 998
    )
    assert code == 0, err
    assert revision(store_url) == 1


def test_an_import_names_a_derived_role_as_grant_does(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("bindings:\n  - {subject: user:a, role: owner}\n", encoding="utf-8")
    code, _, err = cli("store", "import", str(path))
    assert code == 1
    assert (
        f"{path}: bindings[0].role: role `owner` is a derived role (it comes from a "
        "condition); it cannot be granted" in err
    )
    _, _, grant_err = cli("bindings", "grant", "user:a", "owner")
    assert "role `owner` is a derived role (it comes from a condition)" in grant_err


def test_an_import_reports_every_problem_of_the_file_at_once(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(
        """\
bindings:
  - {subject: user:a, role: root}
  - {subject: user:b, role: viewer, expires: 2030-01-01T00:00:00Z}
  - {subject: user:b, role: viewer, expires: 2031-01-01T00:00:00Z}
""",
        encoding="utf-8",
    )
    code, _, err = cli("store", "import", str(path))
    assert code == 1
    assert err.splitlines() == [
        f"{path}: bindings[0].role: role `root` is not declared by the loaded policies",
        f"{path}: bindings[2]: `viewer` in `global` for `user:b` is listed twice with "
        "different expiries (also bindings[1]); the store keeps one",
        f"error: {path}: 2 problem(s); nothing was imported",
    ]


def test_a_cycle_through_the_store_names_the_entries_of_the_file(
    cli: Cli, tmp_path: Path, store_url: str
) -> None:
    cli("groups", "add-member", "group:leads", "group:eng")
    cli("groups", "add-member", "group:ops", "group:leads")
    path = tmp_path / "b.yaml"
    path.write_text(
        """\
groups:
  - id: group:eng
    members: [user:bob, group:leads]
  - id: group:leads
    members: [group:ops]
""",
        encoding="utf-8",
    )
    code, _, err = cli("store", "import", str(path), "--dry-run")
    assert code == 1
    assert err.splitlines() == [
        "error: the import was refused, nothing changed:",
        "  groups would contain each other in a cycle: `group:eng` → `group:leads` → "
        "`group:eng` (`group:leads` in `group:eng`: groups[0].members[1]; `group:eng` in "
        "`group:leads`: in the store)",
        "  groups would contain each other in a cycle: `group:leads` → `group:ops` → "
        "`group:leads` (`group:ops` in `group:leads`: groups[1].members[0]; `group:leads` in "
        "`group:ops`: in the store)",
    ]
    assert revision(store_url) == 2


def test_a_store_file_that_is_not_sqlite_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "x.db"
    path.write_text("not a database", encoding="utf-8")
    assert main(["bindings", "list", "--db", f"sqlite:///{path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(sqlite3.DatabaseError):  # untouched
        sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master").fetchall()
