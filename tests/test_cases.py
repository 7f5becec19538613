"""Data-driven language cases (`tests/cases/*.test.yaml`), run by the runner `pdp test` uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.testing.runner import discover_suites, run_suite

CASES = Path(__file__).parent / "cases"
SUITES = discover_suites(CASES)


def test_there_are_language_cases() -> None:
    assert len(SUITES) >= 15


@pytest.mark.parametrize("path", SUITES, ids=[p.name.removesuffix(".test.yaml") for p in SUITES])
def test_case_file(path: Path) -> None:
    result = run_suite(path, CASES)
    assert result.error is None, result.error
    assert result.cases, "a suite without cases tests nothing"
    failures = [f"{c.name}: {c.message}" for c in result.cases if not c.passed]
    assert not failures, "\n".join(failures)
