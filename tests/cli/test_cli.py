"""The offline CLI: `pdp validate`, `pdp check`, `pdp test`; output shapes and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pdp.cli.main import main

Write = Callable[[str, str | bytes], Path]
REPO = Path(__file__).resolve().parents[2]

POLICY = """\
role viewer
role editor : viewer
derived role owner on document when resource.owner == subject.id
resource document {
  actions read, update
  @id("read") permit viewer to read
  @id("edit") permit editor, owner to update unless resource.archived
  @id("night") forbid any to update when hour(now()) >= 22
}
"""

BINDINGS = """\
subjects:
  - id: user:alice
    attributes: {department: eng}
bindings:
  - subject: user:alice
    role: viewer
  - subject: user:bob
    role: editor
    scope: tenant/acme
"""


def request(subject: str = "alice", action: str = "read", **resource: Any) -> dict[str, Any]:
    return {
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "document", "id": "1", "properties": resource},
    }


@pytest.fixture
def project(write: Write, tmp_path: Path) -> Path:
    write("policies/docs.pdp", POLICY)
    write("bindings.yaml", BINDINGS)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check(
    capsys: pytest.CaptureFixture[str],
    project: Path,
    req: object,
    *extra: str,
) -> tuple[int, str, str]:
    path = project / "request.json"
    path.write_text(req if isinstance(req, str) else json.dumps(req), encoding="utf-8")
    return run(
        capsys,
        "check",
        "--policies",
        project / "policies",
        "--bindings",
        project / "bindings.yaml",
        "--request",
        path,
        "--now",
        "2026-11-26T12:00:00Z",
        *extra,
    )


# --- pdp validate --------------------------------------------------------------------


def test_validate_ok(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, err = run(capsys, "validate", project / "policies")
    assert code == 0
    assert err == ""
    assert out.startswith(
        "ok: 1 file(s), 2 role(s), 1 resource type(s), 3 rule(s); policy_version sha256:"
    )


def test_validate_errors(capsys: pytest.CaptureFixture[str], write: Write) -> None:
    path = write("bad.pdp", "role viewer\nresource d {\n  actions a\n  permit viewr to a\n}\n")
    code, out, err = run(capsys, "validate", path)
    assert code == 1
    assert out == ""
    assert err == (
        f"{path}:4:10: error[unknown_role]: role `viewr` is not declared\n"
        "      permit viewr to a\n"
        "             ^^^^^\n"
        "  help: did you mean `viewer`?\n"
        "\n"
        "1 error(s), 0 warning(s)\n"
    )


def test_validate_warnings_and_strict(capsys: pytest.CaptureFixture[str], write: Write) -> None:
    path = write("w.pdp", "resource d {\n  actions a, a\n}\n")
    code, out, err = run(capsys, "validate", path)
    assert code == 0
    assert "warning[duplicate_action]: action `a` is listed twice" in err
    assert out.rstrip().endswith("; 1 warning(s)")
    code, out, err = run(capsys, "validate", "--strict", path)
    assert code == 1
    assert err.rstrip().endswith("0 error(s), 1 warning(s)")


def test_validate_json(capsys: pytest.CaptureFixture[str], project: Path, write: Write) -> None:
    code, out, _ = run(capsys, "validate", "--json", project / "policies")
    data = json.loads(out)
    assert code == 0
    assert data["ok"] is True
    assert (data["files"], data["rules"], data["problems"]) == (1, 3, [])
    assert data["policy_version"].startswith("sha256:")

    bad = write("bad/x.pdp", "resource d {\n  actions a\n  permit nobody to a\n}\n")
    code, out, _ = run(capsys, "validate", "--json", bad.parent)
    data = json.loads(out)
    assert code == 1
    assert data == {
        "ok": False,
        "files": 1,
        "rules": 0,
        "policy_version": None,
        "problems": [
            {
                "severity": "error",
                "code": "unknown_role",
                "message": "role `nobody` is not declared",
                "file": bad.as_posix(),  # as given: it opens from here
                "line": 3,
                "column": 10,
                "end_line": 3,
                "end_column": 16,
                "help": None,
            }
        ],
    }


def test_validate_an_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", tmp_path)
    assert code == 1
    assert "error[no_policies]: no policy files found (they end in `.pdp`)" in err


def test_validate_a_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", tmp_path / "nope")
    assert code == 1
    assert err == f"error: no such file or directory: {tmp_path / 'nope'}\n"
    # Named by a flag, the flag is named too.
    request = tmp_path / "request.json"
    request.write_text("{}")
    code, _, err = run(capsys, "check", "--policies", tmp_path / "nope", "--request", request)
    assert (code, err) == (
        1,
        f"error: --policies: no such file or directory: {tmp_path / 'nope'}\n",
    )


def test_validate_with_a_schema(
    capsys: pytest.CaptureFixture[str], project: Path, write: Write
) -> None:
    schema = write("schema.yaml", "resources:\n  document: {owner: string, archive: bool}\n")
    code, _, err = run(capsys, "validate", "--schema", schema, project / "policies")
    assert code == 1
    assert "error[unknown_attribute]: `resource.archived` is not in the schema" in err
    assert "help: did you mean `archive`?" in err

    broken = write("broken.yaml", "resources:\n  document: {owner: strin}\n")
    code, _, err = run(capsys, "validate", "--schema", broken, project / "policies")
    assert code == 1
    assert "broken.yaml:2:21: error[schema_type]: `strin` is not a type" in err


def test_validate_with_a_schema_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], project: Path, write: Write
) -> None:
    schema = write("schema.yaml", b"resources: {document: {owner: str\xffing}}\n")
    code, _, err = run(capsys, "validate", "--schema", schema, project / "policies")
    assert code == 1 and "schema" in err


# --- pdp check -----------------------------------------------------------------------


def test_check_allow(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, err = check(capsys, project, request("alice", "read"))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert set(data) >= {"decision", "reasons", "diagnostics", "policy_version"}
    assert data["decision"] is True
    assert data["reasons"] == ["read"]
    assert data["diagnostics"] == []
    assert data["policy_version"].startswith("sha256:")


def test_check_deny_exits_3(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, _ = check(capsys, project, request("alice", "update", owner="bob"))
    assert code == 3
    data = json.loads(out)
    assert (data["decision"], data["reasons"], data["diagnostics"]) == (False, [], [])

    code, out, _ = check(capsys, project, request("bob", "update", tenant="acme"))
    assert code == 3
    assert json.loads(out)["diagnostics"] == [
        {
            "code": "missing_attribute",
            "message": "`resource.archived` is missing",
            "rule_id": "edit",
        }
    ]


def test_check_tenant_scoped_binding(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    acme = request("bob", "update", tenant="acme", archived=False, owner="x")
    globex = request("bob", "update", tenant="globex", archived=False, owner="x")
    assert check(capsys, project, acme)[0] == 0
    assert check(capsys, project, globex)[0] == 3


def test_check_now(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    req = request("alice", "update", owner="alice", archived=False)
    assert check(capsys, project, req)[0] == 0
    code, out, _ = check(capsys, project, req, "--now", "2026-11-26T23:00:00Z")
    assert code == 3
    assert json.loads(out)["reasons"] == ["night"]


def test_check_batch(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    batch = {
        "subject": {"type": "user", "id": "alice"},
        "resource": {"type": "document", "id": "1", "properties": {"owner": "bob"}},
        "evaluations": [
            {"action": {"name": "read"}},
            {"action": {"name": "update"}, "resource": {"type": "document", "id": "2"}},
            {"action": {"name": "read"}, "subject": {"type": "user", "id": "eve"}},
        ],
    }
    code, out, _ = check(capsys, project, batch)
    assert code == 3
    data = json.loads(out)
    assert isinstance(data, list)
    assert [(d["action"], d["decision"]) for d in data] == [
        ("read", True),
        ("update", False),
        ("read", False),
    ]
    # Each decision says which evaluation it answers.
    assert [(d["subject"], d["resource"]) for d in data] == [
        ("user:alice", "document/1"),
        ("user:alice", "document/2"),
        ("user:eve", "document/1"),
    ]


def test_check_actions_shorthand(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    req = {**request("alice"), "actions": [{"name": "read"}, {"name": "read"}]}
    code, out, _ = check(capsys, project, req)
    assert code == 0
    assert [d["decision"] for d in json.loads(out)] == [True, True]


def test_check_reads_stdin(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(request("alice", "read"))))
    code, out, _ = run(
        capsys, "check", "--policies", project / "policies", "--request", "-"
    )  # no bindings: nobody holds a role
    assert code == 3
    assert json.loads(out)["decision"] is False


def test_check_explain(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, _ = check(capsys, project, request("alice", "update", owner="bob"), "--explain")
    assert code == 3
    lines = out.splitlines()
    assert lines[0].startswith("DENY user:alice → update document/1  (policy_version sha256:")
    assert lines[1].split() == ["rule", "where", "effect", "role", "condition", "applied"]
    body = "\n".join(lines[2:])
    assert "night" in body and "docs.pdp:8" in body
    assert "denied by default: no permit applied" in out
    assert "diagnostic[missing_attribute] edit: `resource.archived` is missing" not in out
    assert "derived role `owner`" not in out  # bob owns it: `owner` is false, not an error

    code, out, _ = check(capsys, project, request("alice", "read"), "--explain")
    assert code == 0
    assert out.startswith("ALLOW user:alice → read document/1")
    assert "allowed by: read" in out
    # Ids are printed as they are: `:smile:` is no emoji code here.
    code, out, _ = check(capsys, project, request("smile:x", "read"), "--explain")
    assert out.startswith("DENY user:smile:x → read document/1")


def test_check_explain_shows_diagnostics(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, out, _ = check(capsys, project, request("bob", "update", tenant="acme"), "--explain")
    assert code == 3
    assert "diagnostic[missing_attribute] edit: `resource.archived` is missing" in out


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (
            "{",
            "error: request is not valid JSON: Expecting property name enclosed in double "
            "quotes (line 1, column 2)\n",
        ),
        # What JSON has no number for, and what Python's parser would crash on.
        ('{"context": {"x": NaN}}', "error: request: `NaN` is not a number JSON allows\n"),
        (
            '{"context": {"x": -Infinity}}',
            "error: request: `-Infinity` is not a number JSON allows\n",
        ),
        ("[" * 5000 + "]" * 5000, "error: request: nested too deeply\n"),
        ('{"x": ' + "9" * 5000 + "}", "error: request: an integer of more than 4,300 digits\n"),
        (
            {
                "subject": {"id": "x"},
                "action": {"name": "read"},
                "resource": {"type": "d", "id": "1"},
            },
            "error: bad request: `subject.type`: is required and must be a non-empty string\n",
        ),
        ([1], "error: bad request: `request`: must be an object\n"),
        (
            {**request(), "evaluations": [1]},
            "error: bad request: `evaluations[0]`: must be an object\n",
        ),
        (
            {**request(), "resource": {"type": "d", "id": "1", "ancestors": ["x"]}},
            "error: bad request: `resource.ancestors`: must be a list of `type/id` strings\n",
        ),
        (
            {k: v for k, v in request().items() if k != "action"},
            "error: bad request: `action`: is required\n",
        ),
        (
            {**request(), "action": "read"},
            'error: bad request: `action`: must be an object, not a string; write `{"name": '
            '"read"}`\n',
        ),
        (
            {**request(), "subject": {"type": "user", "id": "alice", "props": {}}},
            "error: bad request: `subject`: unknown key `props`; did you mean `properties`?\n",
        ),
        (
            {**request(), "evaluations": [{"actoin": {"name": "read"}}]},
            "error: bad request: `evaluations[0]`: unknown key `actoin`; did you mean `action`?\n",
        ),
    ],
)
def test_check_bad_requests(
    capsys: pytest.CaptureFixture[str], project: Path, req: object, message: str
) -> None:
    code, out, err = check(capsys, project, req)
    assert (code, out, err) == (1, "", message)


def test_check_bad_bindings(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    (project / "bindings.yaml").write_text(
        "bindings:\n  - {subject: alice, role: viewer}\n  - {subject: user:a, role: admin}\n"
    )
    code, out, err = check(capsys, project, request())
    assert (code, out) == (1, "")
    assert err == (
        "error: bad bindings file:\n"
        f"{project / 'bindings.yaml'}: bindings[0].subject: `alice` is not a subject; "
        "write `type:id`, e.g. `user:alice`\n"
        f"{project / 'bindings.yaml'}: bindings[1].role: role `admin` is not declared by "
        "the policies\n"
    )


def test_check_rejects_a_binding_for_a_derived_role(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    (project / "bindings.yaml").write_text("bindings:\n  - {subject: user:alice, role: owner}\n")
    code, _, err = check(capsys, project, request())
    assert code == 1 and "owner" in err


def test_check_invalid_policies(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    (project / "policies" / "docs.pdp").write_text("role\n")
    code, out, err = check(capsys, project, request())
    assert (code, out) == (1, "")
    assert "docs.pdp:1:5: error[unexpected_end]" in err


def test_check_bad_now(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, _, err = check(capsys, project, request(), "--now", "tomorrow")
    assert code == 1
    assert err == "error: --now: `tomorrow` is not an ISO 8601 time\n"


def test_check_request_not_utf8(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    path = project / "bin.json"
    path.write_bytes(b"\xff\xfe{}")
    code, _, err = run(capsys, "check", "--policies", project / "policies", "--request", path)
    assert code == 1
    assert err.startswith(f"error: cannot read the request {path}: ")


def test_user_input_is_not_markup(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, _, err = check(capsys, project, request(), "--now", "[/]")
    assert code == 1
    assert "`[/]`" in err


def test_check_help_example_is_a_valid_request(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    from pdp.cli.check import EXAMPLE

    example = EXAMPLE.split("\n  or ")[0].split(":\n", 1)[1]
    code, out, err = check(capsys, project, example)
    assert (code, err) == (0, "")
    assert json.loads(out)["decision"] is True


def test_docs_exit_codes_say_a_missing_request_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--policies", str(project / "policies"), "--request", "nope.json"])
    table = (REPO / "docs" / "cli.md").read_text(encoding="utf-8").split("| verb |")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {info.value.code} |"))
    assert "--request" in row


def test_check_usage_errors(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--policies", str(project / "policies"), "--request", "nope.json"])
    assert info.value.code == 2
    assert "no such file: nope.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["check", "--request", "-"])
    assert info.value.code == 2


# --- pdp test ------------------------------------------------------------------------

SUITE = """\
name: docs
bindings: ../bindings.yaml
now: 2026-11-26T12:00:00Z
subjects:
  alice: {type: user, id: alice}
resources:
  doc: {type: document, id: "1", properties: {owner: bob, archived: false}}
cases:
  - name: alice reads
    subject: alice
    resource: doc
    expect: {read: allow, update: deny}
"""


def test_test_passing(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    (project / "policies" / "docs.test.yaml").write_text(SUITE)
    code, out, _ = run(capsys, "test", project / "policies")
    assert code == 0
    assert out.splitlines() == [
        f"✓ {project / 'policies' / 'docs.test.yaml'} (docs): 1 case(s)",
        "1 suite(s), 1 case(s): 1 passed, 0 failed",
    ]


def test_test_failing_with_junit_and_json(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    failing = SUITE.replace("update: deny", "update: allow")
    (project / "policies" / "docs.test.yaml").write_text(failing)
    junit = project / "out" / "junit.xml"
    junit.parent.mkdir()
    code, out, _ = run(capsys, "test", project / "policies", "--junit", junit)
    assert code == 1
    suite_file = project / "policies" / "docs.test.yaml"
    assert (
        f"    FAIL alice reads ({suite_file}:9): update: expected allow, got deny "
        "(no rule applied)" in out
    )
    assert out.splitlines()[-1] == "1 suite(s), 1 case(s): 0 passed, 1 failed"
    root = ET.parse(junit).getroot()
    (suite,) = list(root)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "1", "0")
    (case,) = list(suite)
    assert (case.get("file"), case.get("line")) == (str(suite_file), "9")

    code, out, _ = run(capsys, "test", "--json", project / "policies")
    assert code == 1
    data = json.loads(out)
    assert (data["suites"], data["cases"], data["failed"]) == (1, 1, 1)
    assert data["results"][0]["cases"] == [
        {
            "name": "alice reads",
            "passed": False,
            "message": "update: expected allow, got deny (no rule applied)",
            "line": 9,
        }
    ]


def test_test_broken_suite(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    (project / "policies" / "x.test.yaml").write_text("cases: 5\n")
    code, out, _ = run(capsys, "test", project / "policies")
    assert code == 1
    assert "    suite error: `cases` must be a list" in out


def test_test_summary_adds_up(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    (project / "policies" / "docs.test.yaml").write_text(SUITE)
    (project / "policies" / "x.test.yaml").write_text("cases: 5\n")
    code, out, _ = run(capsys, "test", project / "policies")
    assert code == 1
    summary = out.splitlines()[-1]
    words = summary.replace(",", "").replace(":", "").split()
    cases, passed, failed = int(words[2]), int(words[4]), int(words[6])
    assert passed + failed == cases
    assert summary == "2 suite(s), 1 case(s): 1 passed, 0 failed, 1 suite(s) could not run"


def test_test_summary_counts_every_broken_suite(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    (project / "policies" / "docs.test.yaml").write_text(SUITE)
    (project / "policies" / "x.test.yaml").write_text("cases: 5\n")
    (project / "policies" / "y.test.yaml").write_text("cases: [\n")
    code, out, _ = run(capsys, "test", project / "policies")
    assert code == 1
    assert out.splitlines()[-1] == (
        "3 suite(s), 1 case(s): 1 passed, 0 failed, 2 suite(s) could not run"
    )


def test_test_summary_with_failed_cases_and_no_broken_suite(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    (project / "policies" / "docs.test.yaml").write_text(SUITE)
    failing = SUITE.replace("name: docs", "name: wrong").replace("read: allow", "read: deny")
    (project / "policies" / "wrong.test.yaml").write_text(failing)
    code, out, _ = run(capsys, "test", project / "policies")
    assert code == 1
    assert out.splitlines()[-1] == "2 suite(s), 2 case(s): 1 passed, 1 failed"


def test_test_without_suites(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, _, err = run(capsys, "test", project / "policies")
    assert code == 1
    assert err == f"error: no test suites (*.test.yaml) under {project / 'policies'}\n"
    code, _, err = run(capsys, "test", project / "nope")
    assert (code, err) == (1, f"error: no such file or directory: {project / 'nope'}\n")


# --- the real console script -----------------------------------------------------------


def test_the_installed_command(project: Path) -> None:
    (project / "request.json").write_text(json.dumps(request("alice", "read")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "pdp.cli.main"]
    done = subprocess.run(
        [*base, "validate", "policies"], cwd=project, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 1 file(s)")
    done = subprocess.run(
        [*base, "check", "--policies", "policies", "--bindings", "bindings.yaml",
         "--request", "request.json"],
        cwd=project, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] is True
    done = subprocess.run([*base, "--version"], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "pdp 0.1.0")


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "3  `pdp check`: at least one decision was a deny" in out


def test_the_example_policies_validate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", REPO / "policies")
    assert code == 0, err
    assert out.startswith("ok: ")


def test_an_unknown_option_gets_its_commands_usage_and_the_closest_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pdp.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["bindings", "list", "--subjct", "user:x"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pdp bindings list")
    assert (
        "pdp bindings list: error: unrecognized arguments: --subjct user:x; "
        "did you mean `--subject`?" in err
    )
    with pytest.raises(SystemExit):
        main(["serve", "--port", "5000"])  # what other servers call it
    assert "`--listen HOST:PORT`, e.g. 127.0.0.1:50051" in capsys.readouterr().err


def test_check_a_value_too_deep_to_compare(
    capsys: pytest.CaptureFixture[str], write: Write
) -> None:
    policies = write(
        "deep/p.pdp",
        "resource document {\n  actions read\n  forbid any to read when subject.x == resource.x\n"
        "  permit any to read\n}\n",
    ).parent
    deep = "[" * 900 + "]" * 900
    request = write(
        "deep.json",
        '{"subject": {"type": "user", "id": "u", "properties": {"x": DEEP}}, '
        '"action": {"name": "read"}, '
        '"resource": {"type": "document", "id": "1", "properties": {"x": DEEP}}}'.replace(
            "DEEP", deep
        ),
    )
    code, out, err = run(capsys, "check", "--policies", policies, "--request", request)
    assert (code, out, err) == (1, "", "error: request: a value is nested too deeply to compare\n")
