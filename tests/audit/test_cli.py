"""`pdp audit`: search, show, stats, tail, verify; and clear errors for bad input."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from pdp.audit.record import AuditConfig
from pdp.audit.sql import SqlSink
from pdp.audit.writer import AuditWriter
from pdp.cli.main import main
from tests.audit.support import policy, record, write_log, write_policies

N = 30


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], log: Path) -> None:
        self.capsys = capsys
        self.log = log

    def __call__(self, *argv: str, where: bool = True) -> tuple[int, str, str]:
        args = ["audit", *argv]
        if where and "--db" not in argv and "--log" not in argv:
            args += ["--log", str(self.log)]
        code = main(args)
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err
        return code, captured.out, captured.err

    def json(self, *argv: str) -> dict[str, object]:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        data: dict[str, object] = json.loads(out)
        return data


@pytest.fixture
def log(tmp_path: Path) -> Path:
    d = tmp_path / "pdp-audit"
    write_log(d, [record(i) for i in range(N)])
    return d


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], log: Path) -> Cli:
    return Cli(capsys, log)


def test_the_server_setting_names_select_the_log_too(cli: Cli, log: Path) -> None:
    # `audit.path` / `audit.url` in the server's config: the same names work here.
    by_log = cli("search", "--log", str(log), "--json", where=False)
    assert by_log[0] == 0 and json.loads(by_log[1])["records"]
    assert cli("search", "--path", str(log), "--json", where=False)[1] == by_log[1]
    url = f"sqlite:///{log.parent / 'audit.db'}"
    w = AuditWriter(SqlSink(url), chain="host")
    w.start()
    assert w.submit([record(i) for i in range(3)]).wait(10)
    w.close()
    by_db = cli("search", "--db", url, "--json", where=False)
    assert by_db[0] == 0 and len(json.loads(by_db[1])["records"]) == 3
    assert cli("search", "--url", url, "--json", where=False)[1] == by_db[1]


def test_search_table(cli: Cli) -> None:
    code, out, err = cli("search", "subject=user:alice", "decision=deny", "--limit", "3")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["time", "(UTC)", "decision", "subject"]
    rows = [x for x in lines[1:] if x.startswith("2026-")]
    assert len(rows) == 3 and all("deny" in r and "user:alice" in r for r in rows)
    assert lines[-1].startswith("more: add --cursor ")


def test_search_json_and_paging(cli: Cli) -> None:
    first = cli.json("search", "action=read", "--limit", "4")
    records = first["records"]
    assert isinstance(records, list) and len(records) == 4
    assert records[0]["decision_id"] == "d-00029"  # newest first
    assert records[0]["subject"]["roles"] == ["viewer"]
    assert first["problems"] == []
    cursor = first["next_cursor"]
    assert isinstance(cursor, str)
    second = cli.json("search", "action=read", "--limit", "4", "--cursor", cursor)
    ids = [r["decision_id"] for r in records + second["records"]]  # type: ignore[operator]
    assert ids == [
        "d-00029",
        "d-00028",
        "d-00027",
        "d-00026",
        "d-00024",
        "d-00023",
        "d-00022",
        "d-00021",
    ]


def test_search_time_range(cli: Cli) -> None:
    data = cli.json("search", "--from", "2026-11-26T12:00:10Z", "--to", "2026-11-26T12:00:13Z")
    assert [r["decision_id"] for r in data["records"]] == ["d-00012", "d-00011", "d-00010"]  # type: ignore[union-attr]
    code, out, _ = cli("search", "--since", "5m")  # the records are from hours ago
    assert code == 0 and "no matching decisions" in out


def test_show_re_derives_the_decision(cli: Cli, tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    code, out, _ = cli("show", "d-00004", "--policies", str(policies))
    assert code == 0
    assert "deny" in out and "user:bob" in out and "doc/4" in out
    assert "doc.tenant (docs.pdp:16)" in out
    assert '"tenant": "globex"' in out  # the recorded attributes
    assert "re-derived: deny (matches the record)" in out
    assert "forbid" in out and "doc.viewer-read" in out  # the trace of candidate rules
    data = cli.json("show", "d-00004", "--policies", str(policies))
    again = data["rederived"]
    assert isinstance(again, dict)
    assert again["available"] and again["matches"] and again["decision"] == "deny"
    assert again["reasons"] == ["doc.tenant"]
    assert {t["rule"] for t in again["trace"]} >= {"doc.tenant", "doc.viewer-read"}


def test_show_says_when_the_policy_version_is_gone(cli: Cli, tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    (policies / "extra.pdp").write_text("role auditor\n", encoding="utf-8")
    code, out, _ = cli("show", "d-00001", "--policies", str(policies))
    assert code == 0
    want = f"cannot re-derive: this decision was made by policy version {policy().version}"
    assert want in out and "which is not available" in out


def test_show_says_when_attributes_were_not_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "log"
    write_log(d, [record(1, config=AuditConfig(include=frozenset({"subject"})))])
    code, out, _ = Cli(capsys, d)("show", "d-00001", "--policies", str(write_policies(tmp_path)))
    assert code == 0
    assert "cannot re-derive: the record holds no attributes for action, resource, context" in out


def test_control_characters_from_callers_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "log"
    write_log(d, [record(1, resource="7\x1b[2J\x9b1m")])  # clear screen; a C1 CSI
    run = Cli(capsys, d)
    for argv in (("show", "d-00001"), ("search", "--since", "100000d"), ("tail", "--count", "0")):
        code, out, _ = run(*argv)
        assert code == 0, argv
        assert "\x1b" not in out and "\x9b" not in out, argv
        assert "doc/7\\x1b[2J\\x9b1m" in out.replace("\n", ""), argv


def test_show_unknown_decision(cli: Cli) -> None:
    code, _, err = cli("show", "nope")
    assert code == 1 and "no decision `nope` in" in err
    assert "left out by audit.sample_allowed" in err.replace("\n", " ")


def test_stats(cli: Cli) -> None:
    code, out, _ = cli("stats", "--top", "2")
    assert code == 0
    assert out.startswith(f"{N} decisions, ")
    assert "top denied subjects" in out and "doc.tenant" in out
    data = cli.json("stats", "decision=deny")
    assert data["total"] == data["by_decision"]["deny"]  # type: ignore[index]
    assert [r["rule"] for r in data["top_denied_rules"]] == ["doc.tenant"]  # type: ignore[union-attr]


def test_verify(cli: Cli, log: Path, tmp_path: Path) -> None:
    code, out, _ = cli("verify")
    assert code == 0 and f"chain host: ok, {N} records, seq 1 to {N}" in out
    copy = tmp_path / "copy"
    shutil.copytree(log, copy)
    lines = (copy / "host.jsonl").read_text(encoding="utf-8").splitlines()
    del lines[6]
    (copy / "host.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    code, out, _ = cli("verify", "--log", str(copy))
    assert code == 1
    assert f"chain host: BROKEN at {copy / 'host.jsonl'}:7: seq 8 (decision d-00007)" in out
    assert "record 7 removed or moved" in out
    data = json.loads(cli("verify", "--log", str(copy), "--json")[1])
    assert data["ok"] is False and data["chains"][0]["first_break"]["seq"] == 8
    # The head file is not a log: said so, not read as corrupt records.
    head = next(log.glob("*.head"), None)
    assert head is not None
    code, out, err = cli("verify", "--log", str(head))
    assert code == 1 and not out
    assert f"{head} is not an audit log file (`*.jsonl`)" in err


def test_tail_follows_new_records(cli: Cli, log: Path, tmp_path: Path) -> None:
    # The writer of the log's chain is gone; a second chain starts writing while we follow.
    new = [record(i, subject="dave") for i in range(100, 106)]

    def later() -> None:
        time.sleep(0.3)
        w = AuditWriter(__import__("pdp.audit.jsonl").audit.jsonl.JsonlSink(log), chain="peer")
        w.start()
        for r in new:
            w.submit([r]).wait(5)
            time.sleep(0.02)
        w.close()

    t = threading.Thread(target=later)
    t.start()
    code, out, _ = cli(
        "tail", "subject=dave", "--count", "3", "--timeout", "10", "--json", "--poll", "0.05"
    )
    t.join()
    assert code == 0
    got = [json.loads(x)["decision_id"] for x in out.splitlines()]
    assert got == [r.decision_id for r in new[:3]]


def test_tail_shows_recent_records_first(cli: Cli) -> None:
    code, out, _ = cli("tail", "-n", "2", "decision=allow", "--timeout", "0.2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "d-00027" in lines[0] and "d-00029" in lines[1]


def test_sql_table_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    w = AuditWriter(SqlSink(url), chain="host")
    w.start()
    assert w.submit([record(i) for i in range(10)]).wait(10)
    w.close()
    cli = Cli(capsys, tmp_path)
    data = cli.json("search", "decision=deny", "--db", url)
    assert [r["decision_id"] for r in data["records"]] == [
        "d-00008",
        "d-00005",
        "d-00004",
        "d-00000",
    ]  # type: ignore[union-attr]
    code, out, _ = cli("verify", "--db", url)
    assert code == 0 and "chain host: ok, 10 records" in out


# --- bad input ----------------------------------------------------------------------------


def test_unknown_field(cli: Cli) -> None:
    code, out, err = cli("search", "subjet=user:alice")
    assert code == 2 and not out
    assert "error: unknown field `subjet` (did you mean `subject`?)" in err


def test_bad_time_expression(cli: Cli) -> None:
    code, _, err = cli("stats", "--since", "yesterday")
    assert code == 2
    assert "--since: `yesterday` is not a time; write a duration back from now" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_cursor(cli: Cli) -> None:
    code, _, err = cli("search", "--cursor", "garbage")
    assert code == 2 and "`garbage` is not a cursor of this audit log" in err


def test_a_corrupt_line_is_reported_and_the_rest_searched(cli: Cli, log: Path) -> None:
    path = log / "host.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[11] = lines[11][:-30]
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    code, out, err = cli("search", "--json", "--limit", "100")
    assert code == 0
    assert f"warning: {path}:12: not a valid record: not valid JSON" in err
    assert err.rstrip().endswith("; skipped")
    data = json.loads(out)
    assert len(data["records"]) == N - 1 and "d-00011" not in out
    assert data["problems"][0].startswith(f"{path}:12: ")
    code, out, _ = cli("verify")
    assert code == 1 and f"{path}:12: a line: not a valid record" in out


def test_a_log_that_is_not_there(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("search", "--log", str(tmp_path / "nowhere"))
    assert code == 1 and f"error: no audit log at {tmp_path / 'nowhere'}" in err


def test_a_database_url_that_is_wrong(cli: Cli) -> None:
    code, _, err = cli("search", "--db", "mysql://u@h/d")
    assert code == 1 and "unsupported database `mysql`" in err
    code, _, err = cli("stats", "--db", "postgresql://postgres@127.0.0.1:1/x")
    assert code == 1 and err.startswith("error: audit table at postgresql+psycopg://")
    assert len(err.strip().splitlines()) == 1


def test_a_database_without_the_audit_log(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("search", "--db", f"sqlite:///{tmp_path / 'typo.db'}")
    assert code == 1 and "no SQLite database at" in err
    assert not (tmp_path / "typo.db").exists()  # reading never creates one
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).close()
    code, _, err = cli("stats", "--db", f"sqlite:///{empty}")
    assert code == 1 and "no such table: pdp_audit" in err


def test_log_and_db_together_is_usage(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exc:
        cli("search", "--log", "x", "--db", "sqlite://")
    assert exc.value.code == 2


def test_the_default_log_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDP_AUDIT_LOG", raising=False)
    monkeypatch.delenv("PDP_AUDIT_DB", raising=False)
    code, _, err = Cli(capsys, tmp_path)("search", where=False)
    assert code == 1 and "no audit log at pdp-audit" in err
    write_log(tmp_path / "pdp-audit", [record(1)])
    code, out, _ = Cli(capsys, tmp_path)("search", where=False)
    assert code == 0 and "d-00001" in out


def test_negative_tail_numbers_are_usage_errors(cli: Cli) -> None:
    for argv in (("-n", "-1"), ("--count", "-2"), ("--timeout", "-1")):
        code, _, err = cli("tail", *argv)
        assert code == 2 and "must be 0 or more" in err, argv


def test_re_derived_diagnostics_show_control_characters_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from pdp.cli.common import print_explanation
    from pdp.engine.decision import Diagnostic

    message = "`2026\x1b[2J` is not an ISO 8601 time"  # a caller's value, quoted
    d = Diagnostic("invalid_value", message)
    print_explanation(SimpleNamespace(trace=[], reasons=(), allowed=False, diagnostics=[d]))
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert "diagnostic[invalid_value]: `2026\\x1b[2J` is not an ISO 8601 time" in printed


def test_redacted_values_inside_lists_are_left_out_of_the_rebuilt_request() -> None:
    from pdp.audit.explain import _unredacted
    from pdp.audit.record import REDACTED

    found: list[str] = []
    context = {"items": [{"ssn": REDACTED, "n": 1}, REDACTED], "a": REDACTED, "b": 2}
    assert _unredacted(context, "context", found) == {"items": [{"n": 1}], "b": 2}
    assert found == ["context.items[0].ssn", "context.items[1]", "context.a"]


def test_each_verbs_help_lists_only_what_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    from pdp.cli.main import main

    helps = {}
    for verb in ("search", "show", "verify"):
        with pytest.raises(SystemExit):
            main(["audit", verb, "--help"])
        helps[verb] = capsys.readouterr().out
    assert "FIELD=VALUE" in helps["search"] and "--since" in helps["search"]
    assert "filters, FIELD=VALUE" not in helps["show"] + helps["verify"]
    assert "2h" in helps["verify"]  # the time range it does take
