"""Run policy test suites: fixtures, cases with expected decisions, JUnit output.

A suite (`*.test.yaml`):

    name: documents
    policies: .                   # optional, relative to this file; default: the tested dir
    now: 2026-11-26T12:00:00Z     # optional fixed clock
    bindings: bindings.yaml       # a path, or the bindings document inline
    subjects:
      alice: {type: user, id: alice, properties: {tenant: acme}}
    resources:
      doc1: {type: document, id: "1", properties: {tenant: acme, owner: bob}}
    cases:
      - name: a viewer may read but not update
        subject: alice            # a fixture name, or an inline subject
        resource: doc1
        context: {ip: 10.0.0.1}
        expect: {read: allow, update: deny}
        reasons: {update: [tenant-isolation]}   # optional, exact rule ids

Language suites give `policy_files: {name: text}` inline instead of `policies`, and
may expect load errors instead of decisions: `expect_errors: [{code, line, column}]`.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pdp.engine.bindings import Bindings, RoleSource
from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.request import Request, RequestError, parse_request
from pdp.evaluation import evaluate
from pdp.lang.errors import PolicyError, did_you_mean
from pdp.lang.load import LoadResult, load_paths, load_texts, visible_files
from pdp.lang.times import to_time
from pdp.store.document import (
    DocumentError,
    load_bindings_file,
    load_yaml,
    parse_bindings,
    plain_value,
)

SUITE_SUFFIX = ".test.yaml"
_EXPECT = {"allow": True, "deny": False, True: True, False: False}


@dataclass
class CaseResult:
    suite: str
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0
    line: int | None = None  # where the case starts in its suite file


@dataclass
class SuiteResult:
    path: str
    name: str
    cases: list[CaseResult] = field(default_factory=list)
    error: str | None = None  # the suite itself could not run

    @property
    def failed(self) -> int:
        return sum(not c.passed for c in self.cases) + (1 if self.error else 0)


class SuiteError(Exception):
    """The suite file is malformed; the message says where."""


def discover_suites(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return visible_files(root, SUITE_SUFFIX)


def run_suites(root: Path, *, bindings_override: RoleSource | None = None) -> list[SuiteResult]:
    """Run every suite under `root` (a directory, or one suite file).

    `bindings_override` (e.g. the SQL store for `pdp test --db`) replaces every
    suite's own `bindings`.
    """
    policy_cache: dict[Path, LoadResult] = {}
    default_policies = root if root.is_dir() else root.parent
    return [
        run_suite(path, default_policies, policy_cache, bindings_override)
        for path in discover_suites(root)
    ]


def run_suite(
    path: Path,
    default_policies: Path,
    policy_cache: dict[Path, LoadResult] | None = None,
    bindings_override: RoleSource | None = None,
) -> SuiteResult:
    """Run one suite file; a malformed suite is reported as the suite's error."""
    result = SuiteResult(str(path), path.name)
    try:
        text = path.read_text(encoding="utf-8")
        # Duplicate keys are an error: a second `cases:` would drop the first set unseen.
        data = load_yaml(text, str(path))
        if not isinstance(data, Mapping):
            raise SuiteError("a suite must be a mapping with `cases`")
        _no_unknown_keys(data, SUITE_KEYS, "")
        result.name = str(data.get("name") or path.name)
        loaded = _load_policies(
            path, data, default_policies, {} if policy_cache is None else policy_cache
        )
        if "expect_errors" in data:
            result.cases.append(_check_expected_errors(result.name, loaded, data["expect_errors"]))
            return result
        if loaded.policy_set is None:
            raise SuiteError(
                "the policies do not load:\n" + "\n".join(e.render() for e in loaded.errors)
            )
        policy = compile_policy_set(loaded.policy_set)
        ps = loaded.policy_set
        grantable = {r.name.name for r in ps.roles}
        bindings = (
            bindings_override
            if bindings_override is not None
            else _bindings(path, data.get("bindings"), grantable)
        )
        now = _now(data.get("now"))
        subjects = _fixtures(data, "subjects")
        resources = _fixtures(data, "resources")
        cases = data.get("cases") or []
        if not isinstance(cases, list):
            raise SuiteError("`cases` must be a list")
        lines = _case_lines(text)
        for i, case in enumerate(cases):
            done = _run_case(result.name, i, case, policy, bindings, now, subjects, resources)
            done.line = lines[i] if i < len(lines) else None
            result.cases.append(done)
    except (SuiteError, DocumentError, yaml.YAMLError, OSError) as exc:
        result.error = str(exc)
    return result


SUITE_KEYS = (
    "name",
    "policies",
    "policy_files",
    "bindings",
    "now",
    "subjects",
    "resources",
    "cases",
    "expect_errors",
)
CASE_KEYS = ("name", "subject", "resource", "context", "action_properties", "expect", "reasons")


def _case_lines(text: str) -> list[int]:
    """The line (from 1) where each of a suite's `cases` starts, for failures to point at."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "cases" and isinstance(value, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in value.value]
    return []


def _no_unknown_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    """SuiteError naming the first key that is not one of `allowed`, with the closest one."""
    for key in data:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise SuiteError(f"{where}unknown key `{key}`" + (f"; {hint}" if hint else ""))


def _load_policies(
    path: Path, data: Mapping[str, Any], default: Path, cache: dict[Path, LoadResult]
) -> LoadResult:
    inline = data.get("policy_files")
    if inline is not None:
        if not isinstance(inline, Mapping):
            raise SuiteError("`policy_files` must map file names to policy text")
        return load_texts({str(k): str(v) for k, v in inline.items()})
    where = (path.parent / data["policies"]).resolve() if "policies" in data else default.resolve()
    if where not in cache:
        cache[where] = load_paths([where])
    return cache[where]


def _check_expected_errors(suite: str, loaded: LoadResult, expected: object) -> CaseResult:
    if not isinstance(expected, list):
        raise SuiteError("`expect_errors` must be a list of {code, line, column}")
    got = [_error_key(e) for e in loaded.problems]
    if not all(isinstance(e, Mapping) for e in expected):
        raise SuiteError("each of `expect_errors` must be a mapping such as {code: ..., line: ...}")
    want = [
        {k: v for k, v in e.items() if k in ("code", "line", "column", "message", "severity")}
        for e in expected
    ]
    missing = [w for w in want if not any(_matches(w, g) for g in got)]
    passed = not missing and len(got) == len(want)
    message = "" if passed else f"expected errors {want}, got {got}"
    return CaseResult(suite, "expected errors", passed, message)


def _error_key(e: PolicyError) -> dict[str, object]:
    return {
        "code": e.code,
        "line": e.loc.line if e.loc else None,
        "column": e.loc.column if e.loc else None,
        "message": e.message,
        "severity": e.severity.value,
    }


def _matches(want: Mapping[str, object], got: Mapping[str, object]) -> bool:
    return all(got.get(k) == v for k, v in want.items())


def _bindings(path: Path, value: object, roles: set[str]) -> Bindings:
    if value is None:
        return Bindings()
    if isinstance(value, str):
        return load_bindings_file(path.parent / value, roles)
    return parse_bindings(value, f"{path} (bindings)", roles)


def _now(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return to_time(value)
    except ValueError:
        raise SuiteError(f"`now`: `{value}` is not an ISO 8601 time") from None


def _fixtures(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise SuiteError(f"`{key}` must map fixture names to {key[:-1]}s")
    # Unquoted YAML dates become ISO strings, as a JSON request would carry them.
    result: Mapping[str, Any] = plain_value(value)
    return result


def _run_case(
    suite: str,
    index: int,
    case: object,
    policy: CompiledPolicySet,
    bindings: RoleSource,
    now: datetime | None,
    subjects: Mapping[str, Any],
    resources: Mapping[str, Any],
) -> CaseResult:
    started = time.perf_counter()
    if not isinstance(case, Mapping):
        return CaseResult(suite, f"case {index + 1}", False, "a case must be a mapping")
    name = str(case.get("name") or f"case {index + 1}")
    try:
        _no_unknown_keys(case, CASE_KEYS, "")
        expect = case.get("expect")
        if not isinstance(expect, Mapping) or not expect:
            raise SuiteError("`expect` must map actions to allow or deny")
        # Both fixtures first, and both their problems at once.
        parts, problems = {}, []
        for kind, fixtures in (("subject", subjects), ("resource", resources)):
            try:
                parts[kind] = _fixture(case.get(kind), fixtures, kind)
            except SuiteError as exc:
                problems.append(str(exc))
        if problems:
            raise SuiteError("; ".join(problems))
        requests = []
        for action, want in expect.items():
            if not isinstance(want, str | bool) or want not in _EXPECT:
                raise SuiteError(f"`expect.{action}`: write allow or deny, not `{want}`")
            base = {
                "subject": parts["subject"],
                "resource": parts["resource"],
                "context": plain_value(case.get("context") or {}),
                "action": {"name": str(action), "properties": case.get("action_properties") or {}},
            }
            requests.append(parse_request(base))
        _check_declared(policy, requests)
        want_reasons = case.get("reasons") or {}
        if not isinstance(want_reasons, Mapping) or set(want_reasons) - set(expect):
            raise SuiteError("`reasons` must map actions that `expect` names to rule ids")
        requests = [Request(r.subject, r.action, r.resource, r.context, now) for r in requests]
        decisions = evaluate(policy, requests, bindings, now=now)
    except (SuiteError, RequestError) as exc:
        return CaseResult(suite, name, False, str(exc), time.perf_counter() - started)
    failures = []
    for (action, want), d in zip(expect.items(), decisions, strict=True):
        if d.allowed != _EXPECT[want]:
            why = ", ".join(d.reasons) or "no rule applied"
            diag = "; ".join(f"{x.rule_id}: {x.message}" for x in d.diagnostics)
            failures.append(
                f"{action}: expected {_word(_EXPECT[want])}, got {_word(d.allowed)} ({why})"
                + (f" [{diag}]" if diag else "")
            )
        if action in want_reasons and sorted(want_reasons[action]) != sorted(d.reasons):
            failures.append(
                f"{action}: expected reasons {want_reasons[action]}, got {list(d.reasons)}"
            )
    return CaseResult(suite, name, not failures, "; ".join(failures), time.perf_counter() - started)


def _check_declared(policy: CompiledPolicySet, requests: list[Request]) -> None:
    """A typo in a test's action or resource type would pass every `deny`: refuse it."""
    for r in requests:
        actions = policy.actions.get(r.resource.type)
        if actions is None:
            raise SuiteError(f"resource type `{r.resource.type}` is not declared by the policies")
        if r.action.name not in actions:
            hint = did_you_mean(r.action.name, actions)
            raise SuiteError(
                f"`expect`: action `{r.action.name}` is not declared on `{r.resource.type}`"
                + (f"; {hint}" if hint else "")
            )


def _fixture(value: object, fixtures: Mapping[str, Any], kind: str) -> object:
    if isinstance(value, str):
        if value not in fixtures:
            hint = did_you_mean(value, fixtures)
            raise SuiteError(
                f"`{kind}`: no {kind} fixture named `{value}`" + (f" ({hint})" if hint else "")
            )
        return fixtures[value]
    if value is None:
        raise SuiteError(f"`{kind}` is required")
    return plain_value(value)


def _word(allowed: bool) -> str:
    return "allow" if allowed else "deny"


def junit_xml(results: list[SuiteResult]) -> str:
    """JUnit XML, one testsuite per suite file, as CI systems read it."""
    root = ET.Element("testsuites")
    for suite in results:
        el = ET.SubElement(
            root,
            "testsuite",
            name=suite.name,
            file=suite.path,
            tests=str(len(suite.cases) + (1 if suite.error else 0)),
            failures=str(sum(not c.passed for c in suite.cases)),
            errors="1" if suite.error else "0",
        )
        if suite.error:
            tc = ET.SubElement(el, "testcase", name="(suite)", classname=suite.name)
            ET.SubElement(tc, "error", message=suite.error.splitlines()[0]).text = suite.error
        for case in suite.cases:
            tc = ET.SubElement(
                el, "testcase", name=case.name, classname=suite.name, time=f"{case.seconds:.6f}"
            )
            if case.line is not None:  # read by CI systems that annotate files
                tc.set("file", suite.path)
                tc.set("line", str(case.line))
            if not case.passed:
                ET.SubElement(tc, "failure", message=case.message).text = case.message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
