"""The policy test runner that `pdp test` uses: cases, suite errors, expected errors, JUnit."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

import pdp.testing.runner as runner
from pdp.testing.runner import SuiteResult, discover_suites, junit_xml, run_suite, run_suites

Write = Callable[[str, str | bytes], Path]

POLICY = """\
role viewer
role editor : viewer
derived role owner on document when resource.owner == subject.id
resource document {
  actions read, update, delete
  @id("read") permit viewer to read
  @id("update") permit editor to update unless resource.archived
  @id("owner-delete") permit owner to delete
  @id("office") forbid any to delete unless in_cidr(context.ip, "10.0.0.0/8")
  @id("fresh") forbid any to update when now() > time("2027-01-01")
}
"""

BINDINGS = """\
groups:
  - id: group:eng
    members: [user:bob]
bindings:
  - subject: user:alice
    role: viewer
  - subject: group:eng
    role: editor
    scope: tenant/acme
  - subject: user:temp
    role: editor
    expires: 2026-12-01T00:00:00Z
"""

SUITE = """\
name: documents
now: 2026-11-26T12:00:00Z
bindings: bindings.yaml
subjects:
  alice: {type: user, id: alice}
  bob: {type: user, id: bob}
  temp: {type: user, id: temp}
resources:
  plan: {type: document, id: "1", properties: {tenant: acme, owner: alice, archived: false}}
cases:
  - name: a viewer reads
    subject: alice
    resource: plan
    context: {ip: 10.1.2.3}
    expect: {read: allow, update: deny, delete: allow}
    reasons: {read: [read], delete: [owner-delete]}
  - name: an editor through a group, in the tenant
    subject: bob
    resource: plan
    context: {ip: 10.1.2.3}
    expect: {read: allow, update: allow, delete: deny}
  - name: outside the tenant
    subject: bob
    resource: {type: document, id: "2", properties: {tenant: globex, owner: x}}
    context: {ip: 10.1.2.3}
    expect: {read: deny, update: deny}
  - name: a binding that has not expired yet at the suite's `now`
    subject: temp
    resource: plan
    context: {ip: 10.1.2.3}
    expect: {update: allow}
  - name: the owner may not delete from home
    subject: alice
    resource: plan
    context: {ip: 192.168.1.1}
    expect: {delete: deny}
    reasons: {delete: [office]}
"""


@pytest.fixture
def suite_dir(write: Write, tmp_path: Path) -> Path:
    write("policies/docs.pdp", POLICY)
    write("policies/bindings.yaml", BINDINGS)
    write("policies/docs.test.yaml", SUITE)
    return tmp_path / "policies"


def run_one(path: Path) -> SuiteResult:
    return run_suite(path, path.parent)


def only_case(result: SuiteResult) -> tuple[bool, str]:
    assert result.error is None, result.error
    (case,) = result.cases
    return case.passed, case.message


# --- passing and failing -------------------------------------------------------------


def test_a_passing_suite(suite_dir: Path) -> None:
    (result,) = run_suites(suite_dir)
    assert result.error is None
    assert result.name == "documents"
    assert [(c.name, c.passed, c.message) for c in result.cases] == [
        ("a viewer reads", True, ""),
        ("an editor through a group, in the tenant", True, ""),
        ("outside the tenant", True, ""),
        ("a binding that has not expired yet at the suite's `now`", True, ""),
        ("the owner may not delete from home", True, ""),
    ]
    assert result.failed == 0


def test_now_fixes_the_clock_for_rules_and_expiry(suite_dir: Path, write: Write) -> None:
    later = SUITE.replace("now: 2026-11-26T12:00:00Z", "now: 2027-02-01")
    path = write("policies/docs.test.yaml", later)
    result = run_one(path)
    failed = {c.name: c.message for c in result.cases if not c.passed}
    assert failed == {
        "an editor through a group, in the tenant": "update: expected allow, got deny (fresh)",
        "a binding that has not expired yet at the suite's `now`": (
            "update: expected allow, got deny (fresh)"
        ),
    }


def test_failure_messages(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    path = write(
        "p/fail.test.yaml",
        """\
bindings: {bindings: [{subject: "user:alice", role: viewer}]}
subjects: {alice: {type: user, id: alice}}
resources: {doc: {type: document, id: "1", properties: {owner: bob}}}
cases:
  - name: wrong decision
    subject: alice
    resource: doc
    expect: {read: deny, update: allow}
  - name: wrong reasons
    subject: alice
    resource: doc
    expect: {read: allow}
    reasons: {read: [something-else]}
  - name: shows diagnostics
    subject: alice
    resource: doc
    expect: {delete: allow}
""",
    )
    result = run_one(path)
    assert result.error is None
    assert [(c.name, c.passed, c.message) for c in result.cases] == [
        (
            "wrong decision",
            False,
            "read: expected deny, got allow (read); update: expected allow, got deny "
            "(no rule applied)",
        ),
        ("wrong reasons", False, "read: expected reasons ['something-else'], got ['read']"),
        (
            "shows diagnostics",
            False,
            "delete: expected allow, got deny (office) [office: `context.ip` is missing]",
        ),
    ]
    assert result.failed == 3


BROKEN_CASES = [
    ("- 5", "a case must be a mapping"),
    (
        "- {subject: nobody, resource: doc, expect: {read: allow}}",
        "`subject`: no subject fixture named `nobody`",
    ),
    (  # both typos at once, each with the closest fixture
        "- {subject: alise, resource: dco, expect: {read: allow}}",
        "`subject`: no subject fixture named `alise` (did you mean `alice`?); "
        "`resource`: no resource fixture named `dco` (did you mean `doc`?)",
    ),
    ("- {resource: doc, expect: {read: allow}}", "`subject` is required"),
    ("- {subject: alice, resource: doc}", "`expect` must map actions to allow or deny"),
    (
        "- {subject: alice, resource: doc, expect: {}}",
        "`expect` must map actions to allow or deny",
    ),
    (
        "- {subject: alice, resource: doc, expect: {read: maybe}}",
        "`expect.read`: write allow or deny, not `maybe`",
    ),
    (
        "- {subject: alice, resource: doc, expect: {raed: deny}}",
        "`expect`: action `raed` is not declared on `document`; did you mean `read`?",
    ),
    (
        "- {subject: alice, resource: {type: doc, id: '1'}, expect: {read: deny}}",
        "resource type `doc` is not declared by the policies",
    ),
    (
        "- {subject: alice, resource: doc, expect: {read: allow}, reasons: {update: [x]}}",
        "`reasons` must map actions that `expect` names to rule ids",
    ),
    (
        "- {subject: {type: user}, resource: doc, expect: {read: allow}}",
        "`subject.id`: is required and must be a non-empty string",
    ),
    (
        "- {subject: alice, resource: doc, context: 5, expect: {read: allow}}",
        "`context`: must be an object",
    ),
]


@pytest.mark.parametrize(("case", "message"), BROKEN_CASES)
def test_broken_cases_fail_with_a_message(write: Write, case: str, message: str) -> None:
    write("p/docs.pdp", POLICY)
    path = write(
        "p/s.test.yaml",
        "subjects: {alice: {type: user, id: alice}}\n"
        "resources: {doc: {type: document, id: '1'}}\n"
        f"cases:\n  {case}\n",
    )
    assert only_case(run_one(path)) == (False, message)


TWO_TYPES = """\
role viewer
resource document {
  actions read, update
  permit viewer to read
}
resource folder {
  actions list
  permit viewer to list
}
"""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "{subject: alice, resource: doc, expect: {list: deny}}",
            "`expect`: action `list` is not declared on `document`",
        ),
        (
            "{subject: alice, resource: folder, expect: {read: deny}}",
            "`expect`: action `read` is not declared on `folder`",
        ),
        (
            "{subject: alice, resource: folder, expect: {'*': deny}}",
            "`expect`: action `*` is not declared on `folder`",
        ),
        (
            "{subject: alice, resource: {type: image, id: '1'}, expect: {read: deny}}",
            "resource type `image` is not declared by the policies",
        ),
        (
            "{subject: alice, resource: doc, expect: {read: deny}, reasons: {update: []}}",
            "`reasons` must map actions that `expect` names to rule ids",
        ),
        (
            "{subject: alice, resource: doc, expect: {read: deny}, reasons: {raed: []}}",
            "`reasons` must map actions that `expect` names to rule ids",
        ),
    ],
    ids=[
        "action-of-another-type",
        "action-of-the-other-type",
        "wildcard",
        "undeclared-type",
        "reasons-for-a-declared-action",
        "reasons-for-an-undeclared-action",
    ],
)
def test_cases_must_name_what_the_policies_declare(write: Write, case: str, message: str) -> None:
    write("p/docs.pdp", TWO_TYPES)
    path = write(
        "p/s.test.yaml",
        "subjects: {alice: {type: user, id: alice}}\n"
        "resources: {doc: {type: document, id: '1'}, folder: {type: folder, id: '1'}}\n"
        f"cases:\n  - {case}\n",
    )
    assert only_case(run_one(path)) == (False, message)


def test_a_refused_case_does_not_stop_the_others(write: Write) -> None:
    write("p/docs.pdp", TWO_TYPES)
    path = write(
        "p/s.test.yaml",
        "bindings: {bindings: [{subject: 'user:alice', role: viewer}]}\n"
        "subjects: {alice: {type: user, id: alice}}\n"
        "resources: {folder: {type: folder, id: '1'}}\n"
        "cases:\n"
        "  - {name: refused, subject: alice, resource: folder, expect: {read: allow}}\n"
        "  - {name: runs, subject: alice, resource: folder, expect: {list: allow}}\n",
    )
    result = run_one(path)
    assert result.error is None
    assert [(c.name, c.passed) for c in result.cases] == [("refused", False), ("runs", True)]
    assert result.failed == 1


INLINE_WITH_BINDINGS = """\
policy_files:
  a.pdp: |
    role viewer
    derived role mine on doc when resource.owner == subject.id
    resource doc {
      actions read
      permit viewer, mine to read
    }
bindings: {bindings: [{subject: "user:a", role: ROLE}]}
cases:
  - {subject: {type: user, id: a}, resource: {type: doc, id: '1'}, expect: {read: allow}}
"""


def test_bindings_may_grant_declared_roles(write: Write) -> None:
    path = write("s.test.yaml", INLINE_WITH_BINDINGS.replace("ROLE", "viewer"))
    assert only_case(run_one(path)) == (True, "")


@pytest.mark.parametrize(
    ("role", "problem"),
    [
        # derived roles come from conditions and cannot be granted
        ("mine", "bindings[0].role: role `mine` is not declared by the policies"),
        (
            "viewr",
            "bindings[0].role: role `viewr` is not declared by the policies; "
            "did you mean `viewer`?",
        ),
        ("any", "bindings[0].role: role `any` is not declared by the policies"),
    ],
)
def test_bindings_are_checked_against_the_declared_roles(
    write: Write, role: str, problem: str
) -> None:
    result = run_one(write("s.test.yaml", INLINE_WITH_BINDINGS.replace("ROLE", role)))
    assert (result.cases, result.failed) == ([], 1)
    assert result.error is not None and result.error.endswith(f"(bindings): {problem}")


def test_an_expectation_that_is_a_list(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    path = write(
        "p/s.test.yaml",
        "cases:\n  - {subject: {type: user, id: a}, resource: {type: document, id: '1'}, "
        "expect: {read: [allow]}}\n",
    )
    passed, message = only_case(run_one(path))
    assert not passed and "`expect.read`" in message


# --- suite errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("- a\n- b\n", "a suite must be a mapping with `cases`"),
        ("cases: 5\n", "`cases` must be a list"),
        ("subjects: [1]\ncases: []\n", "`subjects` must map fixture names to subjects"),
        ("resources: 1\ncases: []\n", "`resources` must map fixture names to resources"),
        ("now: soon\ncases: []\n", "`now`: `soon` is not an ISO 8601 time"),
        ("policy_files: [a]\ncases: []\n", "`policy_files` must map file names to policy text"),
        ("expect_errors: {code: x}\n", "`expect_errors` must be a list of {code, line, column}"),
        ("case: []\n", "unknown key `case`; did you mean `cases`?"),
    ],
)
def test_malformed_suites(write: Write, text: str, error: str) -> None:
    write("p/docs.pdp", POLICY)
    result = run_one(write("p/s.test.yaml", text))
    assert (result.error, result.cases, result.failed) == (error, [], 1)


def test_suite_that_is_not_yaml(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    path = write("p/s.test.yaml", "cases: [\n")
    result = run_one(path)
    assert result.error is not None and result.error.startswith(f"{path}: line 2, column ")
    assert "not valid YAML" in result.error and "<unicode string>" not in result.error


def test_a_key_listed_twice_in_a_suite_is_a_suite_error(write: Write) -> None:
    # A second `cases:` would otherwise run only the last set, and pass.
    write("p/docs.pdp", POLICY)
    case = "  - {subject: alice, resource: doc, expect: {read: allow}}\n"
    path = write(
        "p/s.test.yaml",
        "subjects: {alice: {type: user, id: alice}}\n"
        "resources: {doc: {type: document, id: '1'}}\n"
        f"cases:\n{case}cases:\n{case}",
    )
    result = run_one(path)
    assert result.error == (
        f"{path}: line 5, column 1: key `cases` is listed twice in one mapping (first at "
        "line 3, column 1); only the last would be read"
    )


def test_a_misspelled_case_key_fails_the_case_naming_it(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    text = "cases:\n  - {subject: {type: user, id: a}, expct: {read: allow}}\n"
    result = run_one(write("p/s.test.yaml", text))
    assert [c.message for c in result.cases] == ["unknown key `expct`; did you mean `expect`?"]


def test_suite_whose_policies_do_not_load(write: Write) -> None:
    write("p/docs.pdp", "role viewer\nresource d {\n  actions a\n  permit viewr to a\n}\n")
    result = run_one(write("p/s.test.yaml", "cases: []\n"))
    assert result.error == (
        "the policies do not load:\n"
        "docs.pdp:4:10: error[unknown_role]: role `viewr` is not declared\n"
        "      permit viewr to a\n"
        "             ^^^^^\n"
        "  help: did you mean `viewer`?"
    )


def test_suite_with_bad_bindings(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    inline = run_one(
        write("p/a.test.yaml", "bindings: {bindings: [{subject: alice}]}\ncases: []\n")
    )
    assert inline.error is not None
    assert "(bindings): bindings[0].subject: `alice` is not a subject" in inline.error
    missing = run_one(write("p/b.test.yaml", "bindings: nope.yaml\ncases: []\n"))
    assert missing.error is not None and missing.error.endswith(
        "nope.yaml: cannot read: No such file or directory"
    )
    undeclared = run_one(
        write(
            "p/c.test.yaml", "bindings: {bindings: [{subject: user:a, role: owner}]}\ncases: []\n"
        )
    )
    assert undeclared.error is not None
    assert "role `owner` is not declared by the policies" in undeclared.error


def test_suite_with_its_own_policies_path(write: Write, tmp_path: Path) -> None:
    write("elsewhere/docs.pdp", POLICY)
    write(
        "tests/s.test.yaml",
        "policies: ../elsewhere\n"
        "cases:\n  - {subject: {type: user, id: a}, resource: {type: document, id: '1'}, "
        "expect: {read: deny}}\n",
    )
    (result,) = run_suites(tmp_path / "tests")
    assert only_case(result) == (True, "")


def test_empty_suite_passes(write: Write) -> None:
    write("p/docs.pdp", POLICY)
    result = run_one(write("p/s.test.yaml", "name: nothing yet\n"))
    assert (result.error, result.cases, result.failed) == (None, [], 0)


# --- inline policies and expected errors -----------------------------------------------


def test_inline_policies_with_decisions(write: Write) -> None:
    path = write(
        "s.test.yaml",
        """\
policy_files:
  a.pdp: |
    resource doc {
      actions read
      permit any to read when resource.public
    }
cases:
  - subject: {type: user, id: a}
    resource: {type: doc, id: "1", properties: {public: true}}
    expect: {read: allow}
    reasons: {read: ["a.pdp:3"]}
""",
    )
    assert only_case(run_one(path)) == (True, "")


EXPECTS = """\
policy_files:
  a.pdp: |
    role viewer
    resource doc {
      actions read, read
      permit viewr to read
    }
expect_errors:
"""


@pytest.mark.parametrize(
    ("expected", "passes"),
    [
        (
            "  - {code: duplicate_action, line: 3, column: 17, severity: warning}\n"
            "  - {code: unknown_role, line: 4, column: 10,"
            " message: 'role `viewr` is not declared'}\n",
            True,
        ),
        ("  - {code: unknown_role}\n  - {code: duplicate_action}\n", True),
        ("  - {code: unknown_role}\n", False),  # the count must match
        (
            "  - {code: unknown_role, line: 5}\n  - {code: duplicate_action}\n",
            False,
        ),
        ("  - {code: unknown_role}\n  - {code: duplicate_action}\n  - {code: x}\n", False),
        ("  []\n", False),
    ],
)
def test_expected_errors(write: Write, expected: str, passes: bool) -> None:
    result = run_one(write("s.test.yaml", EXPECTS + expected))
    passed, message = only_case(result)
    assert result.cases[0].name == "expected errors"
    assert passed is passes
    if not passes:
        assert message.startswith("expected errors [")
        assert "'code': 'unknown_role', 'line': 4, 'column': 10" in message


def test_expected_errors_of_a_clean_policy(write: Write) -> None:
    path = write("s.test.yaml", "policy_files: {a.pdp: 'role r'}\nexpect_errors: []\n")
    assert only_case(run_one(path)) == (True, "")


def test_expected_errors_given_as_bare_codes(write: Write) -> None:
    text = "policy_files: {a.pdp: 'role r'}\nexpect_errors: [unknown_role]\n"
    result = run_one(write("s.test.yaml", text))
    assert result.error is not None


# --- discovery, caching, JUnit ----------------------------------------------------------


def test_discovery(write: Write, tmp_path: Path) -> None:
    b = write("b.test.yaml", "cases: []\n")
    a = write("sub/a.test.yaml", "cases: []\n")
    write("sub/notes.yaml", "cases: []\n")
    write("c.test.yml", "cases: []\n")
    assert discover_suites(tmp_path) == [b, a]
    assert discover_suites(b) == [b]


def test_policies_are_loaded_once_for_all_suites(
    suite_dir: Path, write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("policies/more.test.yaml", "cases: []\n")
    calls: list[object] = []
    real = runner.load_paths

    def counting(paths: list[Path], *args: object, **kwargs: object) -> object:
        calls.append(paths)
        return real(paths)

    monkeypatch.setattr(runner, "load_paths", counting)
    assert [r.error for r in run_suites(suite_dir)] == [None, None]
    assert len(calls) == 1


def test_junit_xml(suite_dir: Path, write: Write) -> None:
    write("policies/broken.test.yaml", "cases: 5\n")
    write(
        "policies/failing.test.yaml",
        "name: failing <&>\n"
        "cases:\n"
        "  - name: nope\n"
        "    subject: {type: user, id: x}\n"
        "    resource: {type: document, id: '1'}\n"
        "    expect: {read: allow}\n",
    )
    results = run_suites(suite_dir)
    root = ET.fromstring(junit_xml(results))
    assert root.tag == "testsuites"
    suites = {s.get("file", "").rsplit("/", 1)[-1]: s for s in root}
    assert set(suites) == {"broken.test.yaml", "docs.test.yaml", "failing.test.yaml"}

    docs = suites["docs.test.yaml"]
    assert (docs.get("name"), docs.get("tests"), docs.get("failures"), docs.get("errors")) == (
        "documents",
        "5",
        "0",
        "0",
    )
    assert [tc.get("name") for tc in docs][0] == "a viewer reads"
    assert all(float(tc.get("time", "-1")) >= 0 for tc in docs)

    broken = suites["broken.test.yaml"]
    assert (broken.get("tests"), broken.get("failures"), broken.get("errors")) == ("1", "0", "1")
    (tc,) = list(broken)
    error = tc.find("error")
    assert error is not None and error.get("message") == "`cases` must be a list"

    failing = suites["failing.test.yaml"]
    assert failing.get("name") == "failing <&>"
    assert (failing.get("tests"), failing.get("failures"), failing.get("errors")) == ("1", "1", "0")
    failure = failing[0].find("failure")
    assert failure is not None
    assert failure.get("message") == "read: expected allow, got deny (no rule applied)"
    assert failure.text == failure.get("message")


def test_junit_xml_of_nothing() -> None:
    root = ET.fromstring(junit_xml([]))
    assert (root.tag, list(root)) == ("testsuites", [])


def test_yaml_dates_in_fixtures_are_iso_strings(write: Write) -> None:
    path = write(
        "s.test.yaml",
        """\
now: 2026-11-26T12:00:00Z
policy_files:
  a.pdp: |
    resource doc {
      actions read
      permit any to read when time(resource.created) < now()
    }
cases:
  - subject: {type: user, id: a}
    resource: {type: doc, id: "1", properties: {created: 2026-01-01}}
    expect: {read: allow}
""",
    )
    assert only_case(run_one(path)) == (True, "")
