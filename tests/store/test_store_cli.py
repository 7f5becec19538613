"""The store verbs: bindings, subjects, groups, store, db; and `check`/`test` with --db."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from pdp.cli.main import main
from pdp.store.sql import SqlStore


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], url: str, policies: Path) -> None:
        self.capsys = capsys
        self.url = url
        self.policies = policies

    def __call__(self, *argv: str, db: bool = True) -> tuple[int, str, str]:
        args = list(argv)
        if db:
            args += ["--db", self.url]
        if args[:2] in (["bindings", "grant"], ["store", "import"]):
            args += ["--policies", str(self.policies)]
        code = main(args)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *argv: str) -> object:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], store_url: str, policy_dir: Path) -> Cli:
    return Cli(capsys, store_url, policy_dir)


def test_grant_list_revoke(cli: Cli) -> None:
    code, out, _ = cli("bindings", "grant", "user:alice", "editor", "--scope", "tenant/acme")
    assert code == 0 and "granted `editor` in `tenant/acme` to `user:alice`" in out
    code, out, _ = cli("bindings", "grant", "user:alice", "editor", "--scope", "tenant/acme")
    assert code == 0 and "already holds" in out  # reported, not an error
    cli("bindings", "grant", "group:eng", "viewer", "--expires", "30d", "--by", "ops")
    rows = cli.json("bindings", "list")
    assert [(r["subject"], r["role"], r["scope"]) for r in rows] == [  # type: ignore[index,union-attr]
        ("group:eng", "viewer", "global"),
        ("user:alice", "editor", "tenant/acme"),
    ]
    assert rows[0]["created_by"] == "ops" and rows[0]["expires"].endswith("Z")  # type: ignore[index]
    code, out, _ = cli("bindings", "list", "--role", "editor")
    assert code == 0 and "user:alice" in out and "group:eng" not in out
    assert "1 binding(s)" in out
    result = cli.json("bindings", "revoke", "user:alice", "editor", "--scope", "tenant/acme")
    assert result == {
        "changed": True,
        "revision": 3,
        "message": "revoked `editor` in `tenant/acme` from `user:alice`",
        "changes": [
            {"op": "revoke", "target": "user:alice", "detail": "`editor` in `tenant/acme`"}
        ],
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["grant", "user:alice", "editr"],
            "role `editr` is not declared by the loaded policies; did you mean `editor`?",
        ),
        (["grant", "user:alice", "owner"], "role `owner` is a derived role"),
        (["grant", "alice", "editor"], "`alice` is not a subject; write `type:id`"),
        (["grant", "user:alice", "editor", "--scope", "tenant/"], "`tenant/` is not a scope"),
        (["grant", "user:alice", "editor", "--expires", "2020-01-01"], "is in the past"),
        (["grant", "user:alice", "editor", "--expires", "soon"], "`soon` is not a time"),
        (["revoke", "user:alice", "admin"], "holds no `admin` in `global`; nothing to revoke"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli: Cli, store_url: str, argv: list[str], message: str
) -> None:
    code, out, err = cli("bindings", *argv)
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and out == ""
    with SqlStore(store_url) as store:
        assert store.revision() == 0


def test_a_database_that_is_down_is_named_with_its_password_hidden(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://pdp:s3cret@127.0.0.1:{port}/pdp"
    for argv in (["bindings", "list"], ["db", "current"], ["store", "export"]):
        assert main([*argv, "--db", url]) == 1
        err = capsys.readouterr().err
        assert err.strip() == (
            f"error: cannot reach the database at postgresql+psycopg://pdp:***@127.0.0.1:{port}"
            "/pdp: connection refused"
        )
        assert "s3cret" not in err


def test_the_url_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDP_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert main(["db", "current"]) == 0
    assert "env.db: schema" in capsys.readouterr().out
    monkeypatch.delenv("PDP_DB_URL")
    monkeypatch.chdir(tmp_path)
    # The default, sqlite:///pdp.db: a verb that only reads does not make it...
    assert main(["bindings", "list"]) == 1
    assert "error: no SQLite database at pdp.db; `pdp db upgrade" in capsys.readouterr().err
    assert not (tmp_path / "pdp.db").exists()
    # ...one that writes does.
    policies = Path(__file__).parents[2] / "policies"
    grant = ["bindings", "grant", "user:ann", "viewer", "--policies", str(policies)]
    assert main(grant) == 0
    assert (tmp_path / "pdp.db").exists()
    assert main(["bindings", "list"]) == 0
    # A URI filename is SQLite's to open (read-only here): not checked as a path.
    assert main(["bindings", "list", "--db", "sqlite:///file:pdp.db?mode=ro&uri=true"]) == 0


def test_subjects_and_groups(cli: Cli) -> None:
    code, out, _ = cli("subjects", "set", "user:bob", "tenant=acme", "level=3", 'tags=["a"]')
    assert code == 0 and '"level": 3' in out
    cli("subjects", "set", "user:bob", "--unset", "tags")
    cli("groups", "add-member", "group:leads", "user:bob")
    cli("groups", "add-member", "group:eng", "group:leads", "user:carol")
    code, _, err = cli("groups", "add-member", "group:leads", "group:eng")
    assert code == 1 and "would make a cycle" in err
    cli("bindings", "grant", "group:eng", "editor", "--scope", "tenant/acme")
    shown = cli.json("subjects", "show", "user:bob")
    assert shown == {
        "subject": "user:bob",
        "stored": True,
        "attributes": {"tenant": "acme", "level": 3},
        "groups": ["group:leads"],
        "all_groups": ["group:eng", "group:leads"],
        "members": [],
        "bindings": [],
        "inherited_bindings": [
            {
                "subject": "group:eng",
                "role": "editor",
                "scope": "tenant/acme",
                "expires": None,
                "created_by": shown["inherited_bindings"][0]["created_by"],  # type: ignore[index]
                "created_at": shown["inherited_bindings"][0]["created_at"],  # type: ignore[index]
            }
        ],
    }
    code, out, _ = cli("subjects", "show", "user:bob")
    assert code == 0 and "editor" in out and "group:eng" in out
    assert cli.json("groups", "list", "group:eng") == {
        "group": "group:eng",
        "members": ["group:leads", "user:carol"],
    }
    code, out, _ = cli("groups", "remove-member", "group:eng", "user:carol")
    assert code == 0 and "removed" in out
    code, out, _ = cli("groups", "list")
    assert "group:leads" in out and "user:carol" not in out


EXAMPLE = """\
subjects:
  - id: user:alice
    attributes: {tenant: acme}
groups:
  - id: group:eng
    members: [user:bob]
bindings:
  - {subject: user:alice, role: admin, scope: tenant/acme}
  - {subject: group:eng, role: viewer, scope: document/42}
  - {subject: user:old, role: editor, expires: 2020-01-01T00:00:00Z}
"""


def test_import_dry_run_then_import_then_export(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    code, out, err = cli("store", "import", str(path), "--dry-run")
    assert code == 0
    assert "would grant user:alice: `admin` in `tenant/acme`" in out
    assert "would apply: 1 add-member, 2 grant, 1 set-attributes" in out
    assert "note: skipped `editor` in `global`" in err
    assert cli.json("bindings", "list") == []
    code, out, _ = cli("store", "import", str(path))
    assert code == 0 and "applied: 1 add-member, 2 grant, 1 set-attributes (revision 1)" in out
    code, out, _ = cli("store", "import", str(path))
    assert code == 0 and "nothing to change" in out
    code, out, _ = cli("store", "export")
    exported = yaml.safe_load(out)
    assert exported["subjects"] == [{"id": "user:alice", "attributes": {"tenant": "acme"}}]
    assert exported["groups"] == [{"id": "group:eng", "members": ["user:bob"]}]
    assert [(b["subject"], b["role"], b["scope"]) for b in exported["bindings"]] == [
        ("group:eng", "viewer", "document/42"),
        ("user:alice", "admin", "tenant/acme"),
    ]


def test_export_and_import_as_json(cli: Cli, tmp_path: Path, store_url: str) -> None:
    """JSON is the same document (and YAML too), read much faster for big stores."""
    path = tmp_path / "b.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    cli("store", "import", str(path))
    out_file = tmp_path / "b.json"
    assert cli("store", "export", "--format", "json", "-o", str(out_file))[0] == 0
    as_json = json.loads(out_file.read_text(encoding="utf-8"))
    code, out, _ = cli("store", "export")
    assert as_json == yaml.safe_load(out)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out, _ = cli("store", "import", str(out_file), "--db", other, db=False)
    assert code == 0 and "applied: 1 add-member, 2 grant, 1 set-attributes" in out
    broken = tmp_path / "broken.json"
    broken.write_text('{"bindings": [}', encoding="utf-8")
    code, _, err = cli("store", "import", str(broken))
    assert code == 1 and "line 1, column 15: not valid JSON" in err


def test_import_refuses_a_bad_file_whole(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE.replace("role: admin", "role: root"), encoding="utf-8")
    code, out, err = cli("store", "import", str(path))
    assert code == 1 and "role `root` is not declared" in err and "nothing was imported" in err
    path.write_text("bindings: [", encoding="utf-8")
    code, _, err = cli("store", "import", str(path))
    assert code == 1 and "not valid YAML" in err
    assert cli.json("bindings", "list") == []


def test_check_and_test_read_the_store(cli: Cli, tmp_path: Path, policy_dir: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    cli("store", "import", str(path))
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "subject": {"type": "user", "id": "bob"},
                "resource": {"type": "document", "id": "42", "properties": {"tenant": "acme"}},
                "actions": [{"name": "read"}, {"name": "update"}],
            }
        ),
        encoding="utf-8",
    )
    exported = tmp_path / "exported.yaml"
    assert cli("store", "export", "-o", str(exported))[0] == 0
    base = ["check", "--policies", str(policy_dir), "--request", str(request)]
    code, out, _ = cli(*base)
    from_db = json.loads(out)
    assert code == 3  # one deny
    assert [d["decision"] for d in from_db] == [True, False]
    assert {d["bindings_version"] for d in from_db} == {"1"}
    code, out, _ = cli(*base, "--bindings", str(exported), db=False)
    from_file = json.loads(out)
    assert [{k: v for k, v in d.items() if k != "bindings_version"} for d in from_db] == from_file

    suite = policy_dir / "store.test.yaml"
    suite.write_text(
        """
name: store
cases:
  - name: bob reads through his group
    subject: {type: user, id: bob}
    resource: {type: document, id: "42", properties: {tenant: acme}}
    expect: {read: allow, update: deny}
""",
        encoding="utf-8",
    )
    code, out, _ = cli("test", str(policy_dir))
    assert code == 0 and "1 passed" in out
    code, out, _ = cli("test", str(policy_dir), db=False)
    assert code == 1  # without the store bob holds nothing


def test_db_upgrade_and_current(cli: Cli, store_url: str) -> None:
    status = cli.json("db", "current")
    with SqlStore(store_url) as store:
        url = store.url
    assert status == {
        "url": url,
        "schema": "0002",
        "head": "0002",
        "current": True,
        "newer": False,
        "revision": 0,
    }
    code, out, _ = cli("db", "upgrade")
    assert code == 0 and "already at schema 0002" in out


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("bindings", "subjects", "groups", "store", "db"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert "exit codes: 0 success, 1 error" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["bindings", "grant"])
    assert info.value.code == 2
