"""Hostile or broken input: a clear error, no hang, no traceback."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.lang.load import LoadResult, load_paths, load_texts
from pdp.lang.parse import MAX_FILE_BYTES
from tests.helpers import codes

# Generous: these finish in well under a second; the limit only turns a hang into a failure.
TIMEOUT = 60.0
HEAD = "resource doc {\n  actions read\n  permit any to read when "


def load_in_time(files: Mapping[str, str | bytes]) -> LoadResult:
    """`load_texts`, failing (rather than hanging the suite) if it takes far too long."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(load_texts, files).result(timeout=TIMEOUT)
    finally:
        pool.shutdown(wait=False)


def load_one(text: str | bytes) -> LoadResult:
    return load_in_time({"bad.pdp": text})


def the_error(text: str | bytes) -> tuple[str, str]:
    result = load_one(text)
    assert result.policy_set is None
    assert len(result.errors) == 1, [e.render() for e in result.errors]
    error = result.errors[0]
    error.render()
    return error.code, error.message


# --- empty ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "   \n\t\n", "# just a comment", "\ufeff"])
def test_an_empty_file_is_an_empty_policy_set(text: str) -> None:
    result = load_one(text)
    assert result.problems == ()
    assert result.policy_set is not None
    assert result.policy_set.rules == ()


def test_no_files_at_all() -> None:
    assert codes(load_in_time({})) == ["no_policies"]


def test_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a policy")
    result = load_paths([tmp_path])
    assert codes(result) == ["no_policies"]
    assert result.policy_set is None


def test_a_kubernetes_configmap_mount_loads_each_file_once(tmp_path: Path) -> None:
    # The layout kubelet makes: files in a timestamped hidden directory, `..data`
    # pointing at it, and a link per file at the top.
    real = tmp_path / "..2026_11_27_05_00_00.123"
    real.mkdir()
    (real / "docs.pdp").write_text("resource doc {\n  actions read\n  permit any to read\n}\n")
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "docs.pdp").symlink_to("..data/docs.pdp")
    (tmp_path / ".#docs.pdp").symlink_to("emacs@host.1234")  # an editor's lock file
    result = load_paths([tmp_path])
    assert result.problems == () and result.policy_set is not None
    assert list(result.sources) == ["docs.pdp"]


def test_a_missing_path_is_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_paths([tmp_path / "nope"])


# --- not text ------------------------------------------------------------------------


def test_invalid_utf8() -> None:
    assert the_error(b"role a\nrole \xc3\x28\n") == (
        "invalid_encoding",
        "policy files must be UTF-8; byte 0xc3 is not",
    )


def test_utf16_is_not_utf8() -> None:
    assert the_error("role a\n".encode("utf-16")) == (
        "invalid_encoding",
        "policy files must be UTF-8; byte 0xff is not",
    )


def test_nul_bytes() -> None:
    assert the_error(b"\x00" * 100) == (
        "invalid_encoding",
        "policy files are text; this one holds a NUL byte",
    )


def test_control_character() -> None:
    assert the_error("role a\x07\n") == ("unexpected_character", "unexpected character")


def test_non_ascii_in_a_name() -> None:
    assert the_error("role café\n") == ("unexpected_character", "unexpected character `é`")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = load_texts({"junk.pdp": data})
    for p in result.problems:
        assert p.code
        assert p.message
        p.render()
    if result.errors:
        assert result.policy_set is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_random_text_never_raises(text: str) -> None:
    result = load_texts({"junk.pdp": text})
    for p in result.problems:
        p.render()


# --- size and depth ------------------------------------------------------------------


def test_five_megabytes() -> None:
    assert the_error(b"# padding\n" * 524_288) == (
        "file_too_large",
        "policy file is 5,242,880 bytes, more than the limit of 1,000,000",
    )


def test_the_size_limit_is_inclusive() -> None:
    text = "#" * (MAX_FILE_BYTES - 7) + "\nrole a"
    assert len(text.encode()) == MAX_FILE_BYTES
    assert load_one(text).problems == ()
    assert codes(load_one(text + "b")) == ["file_too_large"]


def test_size_counts_bytes_not_characters() -> None:
    text = "#" + "é" * (MAX_FILE_BYTES // 2)  # fewer characters than the limit, more bytes
    assert codes(load_one(text)) == ["file_too_large"]


@pytest.mark.parametrize(
    ("expr", "column"),
    [
        ("(" * 10_000 + "true" + ")" * 10_000, 91),
        ("(" * 10_000, 91),
        ("[" * 10_000 + "]" * 10_000 + " == []", 91),
        ("size(" * 10_000 + '"x"' + ")" * 10_000 + " > 1", 351),
        ("not (" * 10_000 + "true" + ")" * 10_000, None),
        ("not " * 10_000 + "true", None),
    ],
    ids=["parens", "unclosed", "brackets", "calls", "not-parens", "nots"],
)
def test_deep_nesting(expr: str, column: int | None) -> None:
    result = load_one(HEAD + expr + "\n}\n")
    assert codes(result) == ["too_deep"]
    (error,) = result.errors
    assert error.message == "expression nests deeper than 64 levels"
    assert error.loc is not None and error.loc.line == 3
    if column is not None:
        assert error.loc.column == column


def test_deep_nesting_in_a_derived_role() -> None:
    text = "derived role x on doc when " + "not " * 10_000 + "true\nresource doc { actions a }\n"
    assert codes(load_one(text)) == ["too_deep"]


def test_unbalanced_closing_parentheses() -> None:
    result = load_one(HEAD + ")" * 10_000 + "\n}\n")
    assert codes(result) == ["unexpected_token"]


def test_nesting_inside_strings_and_comments_does_not_count() -> None:
    text = HEAD + '"' + "(" * 1000 + '" == resource.a # ' + "(" * 1000 + "\n}\n"
    assert load_one(text).problems == ()


def test_not_chain_limit_matches_the_message() -> None:
    assert codes(load_one(HEAD + "not " * 100 + "true\n}\n")) == ["too_deep"]


@pytest.mark.parametrize(
    "build",
    [lambda n: "not " * n + "true", lambda n: "(" * n + "true" + ")" * n],
    ids=["nots", "parens"],
)
def test_nesting_limit_is_64_levels(build: Callable[[int], str]) -> None:
    assert load_one(HEAD + build(64) + "\n}\n").errors == ()
    assert codes(load_one(HEAD + build(65) + "\n}\n")) == ["too_deep"]


def test_a_long_single_line() -> None:
    text = " ".join(f"role r{i}" for i in range(20_000))
    assert len(text) > 150_000
    result = load_one(text)
    assert result.problems == ()
    assert result.policy_set is not None and len(result.policy_set.roles) == 20_000


def test_a_long_string_literal() -> None:
    text = HEAD + '"' + "x" * 500_000 + '" == resource.a\n}\n'
    assert load_one(text).problems == ()


def test_a_long_broken_line_reports_one_error() -> None:
    text = HEAD + "resource.a == 1 " * 20_000 + "\n}\n"
    assert codes(load_one(text)) == ["unexpected_token"]


def test_errors_per_file_are_capped() -> None:
    result = load_one("role r :\n" * 5000)
    assert 1 < len(result.errors) <= 50


def test_many_files() -> None:
    files = {f"f{i:04}.pdp": f"role r{i}\n" for i in range(500)}
    result = load_in_time(files)
    assert result.problems == ()
    assert result.policy_set is not None and len(result.policy_set.files) == 500


def test_huge_integer_literal() -> None:
    result = load_one(HEAD + "resource.x == " + "9" * 5000 + "\n}\n")
    assert result.errors
    assert [(e.code, e.message) for e in result.errors] == [
        ("invalid_number", "number is too large")
    ]


@pytest.mark.parametrize(
    "literal",
    ["1e999", "-1e999", "1.5e400", "9" * 309, "9" * 4300, "9" * 5000],
    ids=["exponent", "negative", "fraction", "309-digits", "4300-digits", "5000-digits"],
)
def test_number_too_large(literal: str) -> None:
    text = HEAD + "resource.x == " + literal + "\n}\n"
    assert the_error(text) == ("invalid_number", "number is too large")


@pytest.mark.parametrize("literal", ["1e308", "9" * 308, "-1.7e308"])
def test_the_largest_numbers_are_accepted(literal: str) -> None:
    assert load_one(HEAD + "resource.x == " + literal + "\n}\n").problems == ()


# --- strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        (r'"\q"', "unknown escape sequence `\\q` in string"),
        (r'"\x41"', "unknown escape sequence `\\x` in string"),
        (r'"\u1234"', "unknown escape sequence `\\u` in string"),
        (r'"\u{}"', "unknown escape sequence `\\u` in string"),
        (r'"\u{110000}"', "`\\u{110000}` is not a Unicode character"),
        (r'"\u{D800}"', "`\\u{D800}` is not a Unicode character"),
        (r'"\'"', "unknown escape sequence `\\'` in string"),
        (r'"\ "', "unknown escape sequence `\\ ` in string"),
    ],
)
def test_unknown_escapes(literal: str, message: str) -> None:
    assert the_error(HEAD + f"resource.a == {literal}\n}}\n") == ("invalid_escape", message)


def test_every_bad_escape_in_a_string_is_reported() -> None:
    result = load_one(HEAD + r'resource.a == "\q\w\e"' + "\n}\n")
    assert [(e.code, e.loc.column if e.loc else None) for e in result.errors] == [
        ("invalid_escape", 42),
        ("invalid_escape", 44),
        ("invalid_escape", 46),
    ]


@pytest.mark.parametrize(
    "literal",
    ['"abc', '"abc\\"', '"multi\nline"', "'single'"],
    ids=["open", "escaped-quote", "newline", "single-quotes"],
)
def test_broken_strings(literal: str) -> None:
    code, _ = the_error(HEAD + f"resource.a == {literal}\n}}\n")
    assert code in ("unterminated_string", "unexpected_character")


def test_file_ending_inside_a_string() -> None:
    assert the_error(HEAD + '"abc') == (
        "unterminated_string",
        "string is not closed before the end of the line",
    )


# --- files on disk -------------------------------------------------------------------


def test_bad_files_on_disk(write: Callable[[str, str | bytes], Path], tmp_path: Path) -> None:
    write("ok.pdp", "role a\n")
    write("sub/binary.pdp", bytes(range(256)))
    write("sub/big.pdp", b"#" * (MAX_FILE_BYTES + 1))
    write("notes.txt", b"\xff\xfe ignored: not a policy file")
    result = load_paths([tmp_path])
    assert [(p.code, p.loc.file if p.loc else None) for p in result.problems] == [
        ("file_too_large", "sub/big.pdp"),
        ("invalid_encoding", "sub/binary.pdp"),
    ]
