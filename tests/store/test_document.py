"""The bindings YAML document: parsing, every problem it reports, and dump → parse."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.store.document import (
    DocumentError,
    dump_bindings,
    load_bindings_file,
    load_document,
    parse_bindings,
    parse_document,
)
from pdp.store.validate import RoleCatalog

Write = Callable[[str, str | bytes], Path]

GOOD = """\
subjects:
  - id: user:alice
    attributes: {tenant: acme, department: eng, since: 2024-05-01, tags: [a, b]}
groups:
  - id: group:editors
    members: [user:alice, group:leads]
  - id: group:leads
    members: [user:carol]
bindings:
  - subject: group:editors
    role: editor
    scope: tenant/acme
  - subject: user:carol
    role: viewer
    scope: folder/7
    expires: 2027-01-01T00:00:00Z
    created_by: user:admin
  - subject: user:dave
    role: viewer
    expires: 2027-06-01
  - subject: user:erin
    role: viewer
    expires: "2027-06-01T12:00:00+02:00"
"""


def problems(data: Any, known_roles: set[str] | None = None) -> list[str]:
    with pytest.raises(DocumentError) as info:
        parse_bindings(data, "b.yaml", known_roles)
    assert info.value.source == "b.yaml"
    assert str(info.value) == "\n".join(f"b.yaml: {p}" for p in info.value.problems)
    return info.value.problems


def test_good_document(write: Write) -> None:
    b = load_bindings_file(write("b.yaml", GOOD))
    assert b.subjects == {
        "user:alice": {
            "tenant": "acme",
            "department": "eng",
            "since": "2024-05-01",  # a YAML date becomes the string a request would send
            "tags": ["a", "b"],
        }
    }
    assert b.groups == {
        "group:editors": frozenset({"user:alice", "group:leads"}),
        "group:leads": frozenset({"user:carol"}),
    }
    assert b.bindings == (
        RoleBinding("group:editors", "editor", "tenant/acme"),
        RoleBinding(
            "user:carol",
            "viewer",
            "folder/7",
            datetime(2027, 1, 1, tzinfo=UTC),
            "user:admin",
        ),
        RoleBinding("user:dave", "viewer", "global", datetime(2027, 6, 1, tzinfo=UTC)),
        RoleBinding(
            "user:erin",
            "viewer",
            "global",
            datetime(2027, 6, 1, 12, tzinfo=timezone(timedelta(hours=2))),
        ),
    )
    assert b.groups_of("user:carol") == {"group:leads", "group:editors"}


def test_empty_documents() -> None:
    assert parse_bindings(None) == Bindings()
    assert parse_bindings({}) == Bindings()
    assert parse_bindings({"subjects": None, "groups": [], "bindings": None}) == Bindings()


def test_known_roles_are_enforced_only_when_given() -> None:
    doc = {"bindings": [{"subject": "user:a", "role": "admin"}]}
    assert parse_bindings(doc).bindings == (RoleBinding("user:a", "admin"),)
    assert parse_bindings(doc, known_roles={"admin"}).bindings == (RoleBinding("user:a", "admin"),)
    assert problems(doc, {"admn", "viewer"}) == [
        "bindings[0].role: role `admin` is not declared by the policies; did you mean `admn`?"
    ]
    assert problems(doc, {"viewer"}) == [
        "bindings[0].role: role `admin` is not declared by the policies"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], ["the document must be a mapping with subjects, groups, bindings"]),
        ("text", ["the document must be a mapping with subjects, groups, bindings"]),
        ({"subjectz": []}, ["unknown section `subjectz`; did you mean `subjects`?"]),
        ({"roles": []}, ["unknown section `roles`"]),
        ({"subjects": {"a": 1}}, ["subjects: must be a list"]),
        ({"groups": "x"}, ["groups: must be a list"]),
        ({"bindings": 5}, ["bindings: must be a list"]),
        (
            {
                "subjects": [
                    1,
                    {"id": "alice"},
                    {"id": "user:a", "attributes": [1]},
                    {"id": "user:b"},
                    {"id": "user:b"},
                ]
            },
            [
                "subjects[0]: must be a mapping with `id` and `attributes`",
                "subjects[1].id: `alice` is not a subject; write `type:id`, e.g. `user:alice`",
                "subjects[2].attributes: must be a mapping",
                "subjects[4].id: subject `user:b` is listed twice",
            ],
        ),
        (
            {
                "groups": [
                    1,
                    {"id": "user:x", "members": ["user:a"]},
                    {"id": "group:g", "members": "user:a"},
                    {"id": "group:h", "members": ["bad"]},
                    {"members": []},
                ]
            },
            [
                "groups[0]: must be a mapping with `id` and `members`",
                "groups[1].id: `user:x` is not a group; group ids are `group:<name>`",
                "groups[2].members: must be a list of `type:id`",
                "groups[3].members[0]: `bad` is not a subject; write `type:id`, e.g. `user:alice`",
                "groups[4].id: is required",
            ],
        ),
        (
            {
                "groups": [
                    {"id": "group:a", "members": ["group:b"]},
                    {"id": "group:b", "members": ["group:c"]},
                    {"id": "group:c", "members": ["group:a", "user:x"]},
                ]
            },
            [
                "groups contain each other in a cycle: `group:a` → `group:b` → `group:c` → "
                "`group:a` (groups[0].members[0], groups[1].members[0], groups[2].members[0])"
            ],
        ),
        (
            {
                "bindings": [
                    1,
                    {"subject": "user:a"},
                    {"subject": "user:a", "role": "r", "scope": "nope"},
                    {"subject": "user:a", "role": "r", "expires": "soon"},
                    {"subject": "x", "role": "r"},
                    {"subject": "user:a", "role": ""},
                    {"subject": "user:a", "role": "r", "scope": "tenant/"},
                    {"subject": "user:a", "role": 5},
                    {"subject": "user:a", "role": None},
                    {"subject": "user:a", "role": "r", "scope": "tenant/a/b"},
                ]
            },
            [
                "bindings[0]: must be a mapping with `subject`, `role` and `scope`",
                "bindings[1].role: is required",
                "bindings[2].scope: `nope` is not a scope; write `global`, `tenant/<t>` or "
                "`<type>/<id>`",
                "bindings[3].expires: `soon` is not an ISO 8601 time such as 2027-01-01T00:00:00Z",
                "bindings[4].subject: `x` is not a subject; write `type:id`, e.g. `user:alice`",
                "bindings[5].role: must be a role name",
                "bindings[6].scope: `tenant/` is not a scope; write `global`, `tenant/<t>` or "
                "`<type>/<id>`",
                "bindings[7].role: must be a role name",
                "bindings[8].role: is required",
                "bindings[9].scope: `tenant/a/b` is not a scope; write `global`, `tenant/<t>` or "
                "`<type>/<id>`",
            ],
        ),
    ],
)
def test_every_problem_is_reported_with_its_place(data: Any, expected: list[str]) -> None:
    assert problems(data) == expected


def test_nan_attributes_are_refused_with_their_place() -> None:
    data = {"subjects": [{"id": "user:a", "attributes": {"levels": [1, float("nan")]}}]}
    assert problems(data) == [
        "subjects[0].attributes.levels[1]: NaN and infinite numbers are not values"
    ]


@pytest.mark.parametrize(
    "group",
    [
        {"id": "user:x", "members": ["bad"]},
        {"id": "user:x", "members": "bad"},
        {"id": "user:x", "members": ["user:x"]},
    ],
)
def test_a_group_with_a_wrong_id_is_reported_and_skipped(group: dict[str, Any]) -> None:
    # its members are not looked at, so one mistake gives one problem
    assert problems({"groups": [group]}) == [
        "groups[0].id: `user:x` is not a group; group ids are `group:<name>`"
    ]


def test_a_skipped_group_takes_no_part_in_cycles() -> None:
    data = {
        "groups": [
            {"id": "group:a", "members": ["user:x"]},
            {"id": "user:x", "members": ["group:a"]},
        ]
    }
    assert problems(data) == ["groups[1].id: `user:x` is not a group; group ids are `group:<name>`"]


def test_problems_of_all_sections_come_together() -> None:
    data = {
        "extra": 1,
        "subjects": [{"id": "nope"}],
        "groups": [{"id": "group:g", "members": ["nope"]}],
        "bindings": [{"subject": "nope", "role": "r"}],
    }
    assert [p.split(":")[0] for p in problems(data)] == [
        "unknown section `extra`",
        "subjects[0].id",
        "groups[0].members[0]",
        "bindings[0].subject",
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as info:
        load_bindings_file(tmp_path / "nope.yaml")
    assert info.value.problems == ["cannot read: No such file or directory"]


def test_invalid_yaml_names_the_line(write: Write) -> None:
    path = write("b.yaml", "bindings:\n  - subject: user:a\n    role: [r\n")
    with pytest.raises(DocumentError) as info:
        load_bindings_file(path)
    (problem,) = info.value.problems
    assert problem.startswith("line 4, column 1: not valid YAML: ")


def test_yaml_tags_are_not_executed(write: Write) -> None:
    path = write("b.yaml", "bindings: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(DocumentError):
        load_bindings_file(path)


def test_a_file_that_is_not_utf8(write: Write) -> None:
    path = write("b.yaml", b"bindings:\n  - subject: user:\xff\n    role: r\n")
    with pytest.raises(DocumentError):
        load_bindings_file(path)


# --- dump → parse ------------------------------------------------------------------


def test_dump_of_the_good_document_parses_back(write: Write) -> None:
    original = load_bindings_file(write("b.yaml", GOOD))
    dumped = dump_bindings(original)
    assert dumped["bindings"][1] == {
        "subject": "user:carol",
        "role": "viewer",
        "scope": "folder/7",
        "expires": "2027-01-01T00:00:00Z",
        "created_by": "user:admin",
    }
    text = yaml.safe_dump(dumped, sort_keys=False)
    assert parse_bindings(yaml.safe_load(text)) == original


def test_dump_of_nothing_is_empty() -> None:
    assert dump_bindings(Bindings()) == {}


names = st.text("abcdefghij-_", min_size=1, max_size=6)
subject_keys = st.builds(lambda t, i: f"{t}:{i}", st.sampled_from(["user", "service"]), names)
group_keys = names.map(lambda n: f"group:{n}")
scopes = st.one_of(
    st.just("global"),
    names.map(lambda n: f"tenant/{n}"),
    st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["document", "folder"]), names),
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
)
attr_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), names),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)),
    max_leaves=5,
)


@st.composite
def bindings_sets(draw: st.DrawFn) -> Bindings:
    subjects = draw(st.dictionaries(subject_keys, st.dictionaries(names, attr_values, max_size=3)))
    group_names = draw(st.lists(group_keys, unique=True, max_size=4))
    # members only point at earlier groups, so there is no cycle
    groups = {
        g: frozenset(
            draw(st.lists(st.one_of(subject_keys, *[st.just(x) for x in group_names[:i]])))
        )
        for i, g in enumerate(group_names)
    }
    rows = draw(
        st.lists(
            st.builds(
                RoleBinding,
                st.one_of(subject_keys, group_keys),
                names,
                scopes,
                st.one_of(st.none(), times),
                st.one_of(st.none(), subject_keys),
            ),
            max_size=6,
        )
    )
    return Bindings(subjects=subjects, groups=groups, bindings=tuple(rows))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(bindings_sets())
def test_dump_then_parse_round_trips(b: Bindings) -> None:
    text = yaml.safe_dump(dump_bindings(b), sort_keys=False, allow_unicode=True)
    assert parse_bindings(yaml.safe_load(text)) == b


def test_dates_in_expires_are_midnight_utc() -> None:
    doc = {"bindings": [{"subject": "user:a", "role": "r", "expires": date(2027, 1, 2)}]}
    assert parse_bindings(doc).bindings[0].expires == datetime(2027, 1, 2, tzinfo=UTC)


def test_a_misspelled_key_is_named_with_the_closest_one() -> None:
    data = {
        "subjects": [{"id": "user:a", "atributes": {}}],
        "groups": [{"id": "group:g", "member": ["user:a"]}],
        "bindings": [{"subjct": "user:x", "role": "viewer"}],
    }
    with pytest.raises(DocumentError) as info:
        parse_bindings(data)
    assert info.value.problems == [
        "subjects[0]: unknown key `atributes`; did you mean `attributes`?",
        "groups[0]: unknown key `member`; did you mean `members`?",
        "bindings[0]: unknown key `subjct`; did you mean `subject`?",
        "bindings[0].subject: is required",
    ]


# --- keys listed twice, lengths, time range ---------------------------------------


def test_a_key_listed_twice_is_an_error_naming_file_line_and_key(write: Write) -> None:
    """PyYAML would keep the last one silently: a whole `bindings:` section lost."""
    path = write(
        "b.yaml",
        "bindings:\n"
        "  - {subject: user:x, role: viewer, role: admin}\n"
        "groups: []\n"
        "bindings:\n"
        "  - {subject: user:y, role: viewer}\n",
    )
    with pytest.raises(DocumentError) as info:
        load_bindings_file(path)
    assert info.value.source == str(path)
    assert info.value.problems == [
        "line 2, column 37: key `role` is listed twice in one mapping (first at line 2, "
        "column 23); only the last would be read",
        "line 4, column 1: key `bindings` is listed twice in one mapping (first at line 1, "
        "column 1); only the last would be read",
    ]
    assert str(info.value).startswith(f"{path}: line 2, column 37: key `role`")


def test_a_key_listed_twice_in_json_is_found_with_its_line() -> None:
    text = '{"bindings": [\n  {"subject": "user:x", "role": "viewer"}\n],\n "bindings": []}'
    with pytest.raises(DocumentError) as info:
        load_document(text, "b.json")
    assert info.value.problems == [
        "line 4, column 2: key `bindings` is listed twice in one mapping (first at line 1, "
        "column 2); only the last would be read"
    ]
    with pytest.raises(DocumentError, match="line 1, column 8: not valid JSON"):
        load_document('{"a": [}', "b.json")


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    data = load_document(
        "base: &b {role: viewer, scope: global}\nitem: {<<: *b, role: admin}\n", "x"
    )
    assert data["item"] == {"role": "admin", "scope": "global"}


def test_ids_and_scopes_too_long_for_the_store_are_named() -> None:
    long_id = "user:" + "x" * 1200
    data = {
        "groups": [{"id": "group:g", "members": [long_id]}],
        "bindings": [
            {"subject": long_id, "role": "viewer"},
            {"subject": "user:a", "role": "viewer", "scope": "document/" + "é" * 600},
            {"subject": "user:a", "role": "r" * 300},
        ],
    }
    assert problems(data) == [
        "groups[0].members[0]: subject `user:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…` is too long: "
        "1,205 characters; the store takes at most 1,000 bytes of UTF-8 (1,000 ASCII characters)",
        "bindings[0].subject: subject `user:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…` is too long: "
        "1,205 characters; the store takes at most 1,000 bytes of UTF-8 (1,000 ASCII characters)",
        "bindings[1].scope: scope `document/ééééééééééééééééééééééééééééééé…` is too long: "
        "609 characters (1,209 bytes of UTF-8); the store takes at most 1,000 bytes of UTF-8 "
        "(1,000 ASCII characters)",
        "bindings[2].role: role name `rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr…` is too long: "
        "300 characters; the store takes at most 200 bytes of UTF-8 (200 ASCII characters)",
    ]
    fits = {"bindings": [{"subject": "user:" + "x" * 995, "role": "viewer"}]}
    assert parse_bindings(fits).bindings[0].subject == "user:" + "x" * 995


def test_an_expiry_outside_the_years_1_to_9999_in_utc_is_named() -> None:
    data = {
        "bindings": [{"subject": "user:a", "role": "r", "expires": "9999-12-31T23:00:00-05:00"}]
    }
    assert problems(data) == [
        "bindings[0].expires: `9999-12-31T23:00:00-05:00` is out of range: in UTC it falls "
        "outside the years 1 to 9999"
    ]


def test_a_derived_role_is_named_as_one_when_the_catalog_is_given() -> None:
    catalog = RoleCatalog(frozenset({"viewer", "editor"}), frozenset({"owner"}))
    data = {
        "bindings": [{"subject": "user:a", "role": "owner"}, {"subject": "user:a", "role": "viewr"}]
    }
    assert problems(data, catalog) == [  # type: ignore[arg-type]
        "bindings[0].role: role `owner` is a derived role (it comes from a condition); "
        "it cannot be granted",
        "bindings[1].role: role `viewr` is not declared by the loaded policies; "
        "did you mean `viewer`?",
    ]


def test_for_import_a_binding_twice_with_different_expiries_names_both_entries() -> None:
    data = {
        "bindings": [
            {"subject": "user:a", "role": "viewer", "expires": "2030-01-01T00:00:00Z"},
            {"subject": "user:a", "role": "viewer"},
            {"subject": "user:a", "role": "viewer", "expires": "2030-01-01T00:00:00Z"},
            {"subject": "user:a", "role": "undeclared"},
        ]
    }
    with pytest.raises(DocumentError) as info:
        parse_document(data, "b.yaml", {"viewer"}, for_import=True)
    assert info.value.problems == [
        "bindings[1]: `viewer` in `global` for `user:a` is listed twice with different "
        "expiries (also bindings[0]); the store keeps one",
        "bindings[3].role: role `undeclared` is not declared by the policies",
    ]
    # `pdp check` reads it (either grants while it holds): only imports refuse it.
    assert len(parse_bindings({"bindings": data["bindings"][:3]}).bindings) == 3


def test_a_flow_style_yaml_file_is_not_taken_for_broken_json(write: Write) -> None:
    path = write("b.yaml", "{bindings: [{subject: user:a, role: viewer}]}\n")
    assert load_bindings_file(path).bindings == (RoleBinding("user:a", "viewer"),)
    with pytest.raises(DocumentError, match="line 1, column 45: key `role` is listed twice"):
        load_document("{bindings: [{subject: user:a, role: viewer, role: x}]}", "b.yaml")
