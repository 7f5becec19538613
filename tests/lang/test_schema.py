"""The optional attribute schema: loading, its errors with positions, type checks with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pdp.lang.errors import PolicyLoadError
from pdp.lang.load import load_texts
from pdp.lang.schema import Schema, load_schema

Write = Callable[[str, str | bytes], Path]


def schema_errors(path: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        load_schema(path)
    return [e.render() for e in info.value.errors]


def test_good_schema(write: Write) -> None:
    path = write(
        "schema.yaml",
        "subjects:\n"
        "  user: {tenant: string, level: int}\n"
        "  service:\n"
        "    tenant: string\n"
        "    level: int?\n"
        "resources:\n"
        "  document: {owner: string, archived: bool, tags: list, meta: record, size: number}\n"
        "context: {ip: string, score: float, extra: any}\n",
    )
    assert load_schema(path) == Schema(
        subjects={
            "user": {"tenant": "string", "level": "int"},
            "service": {"tenant": "string", "level": "int"},
        },
        resources={
            "document": {
                "owner": "string",
                "archived": "bool",
                "tags": "list",
                "meta": "record",
                "size": "number",
            }
        },
        context={"ip": "string", "score": "float", "extra": "any"},
    )


def test_empty_schema_file_is_an_empty_schema(write: Write) -> None:
    assert load_schema(write("schema.yaml", "")) == Schema()
    assert load_schema(write("schema.yaml", "# nothing yet\n")) == Schema()


def test_every_shape_and_type_error_is_reported_with_its_position(write: Write) -> None:
    path = write(
        "schema.yaml",
        "subjects:\n"  # 1
        "  user:\n"  # 2
        "    tenant: string\n"  # 3
        "  service: [a, b]\n"  # 4
        "resources:\n"  # 5
        "  document:\n"  # 6
        "    owner: strng\n"  # 7
        "    tags: [list]\n"  # 8
        "  folder: 5\n"  # 9
        "extra: 1\n",  # 10
    )
    name = str(path)
    assert sorted(schema_errors(path)) == sorted(
        [
            f"{name}:10:1: error[schema_shape]: unknown section `extra`\n    extra: 1\n    ^^^^^",
            f"{name}:4:12: error[schema_shape]: subject type `service` must be a mapping\n"
            "      service: [a, b]\n"
            "               ^^^^^^",
            f"{name}:7:12: error[schema_type]: `strng` is not a type\n"
            "        owner: strng\n"
            "               ^^^^^\n"
            "  help: did you mean `string`?",
            f"{name}:8:11: error[schema_type]: type of `tags` must be a name\n"
            "        tags: [list]\n"
            "              ^^^^^^\n"
            "  help: types: string, int, float, number, bool, list, record, any",
            f"{name}:9:11: error[schema_shape]: resource type `folder` must be a mapping\n"
            "      folder: 5\n"
            "              ^",
        ]
    )


def test_unknown_section_suggests_the_right_one(write: Write) -> None:
    path = write("schema.yaml", "contex: {ip: string}\n")
    (error,) = schema_errors(path)
    assert error.endswith("  help: did you mean `context`?")


def test_a_name_listed_twice_is_an_error(write: Write) -> None:
    # PyYAML keeps the last silently: the first type would be lost unseen.
    path = write("schema.yaml", "subjects:\n  user:\n    tenant: string\n    tenant: int\n")
    assert schema_errors(path) == [
        f"{path}:4:5: error[schema_shape]: `tenant` is listed twice in subject type `user` "
        "(first at line 3)\n        tenant: int\n        ^^^^^^"
    ]


def test_schema_must_be_a_mapping(write: Write) -> None:
    path = write("schema.yaml", "- a\n- b\n")
    assert schema_errors(path) == [
        f"{path}:1:1: error[schema_shape]: the schema must be a mapping\n    - a\n    ^"
    ]


def test_yaml_syntax_error_has_a_position(write: Write) -> None:
    path = write("schema.yaml", "subjects:\n  user: {tenant: string\n")
    with pytest.raises(PolicyLoadError) as info:
        load_schema(path)
    (error,) = info.value.errors
    assert error.code == "schema_syntax"
    assert error.loc is not None and (error.loc.line, error.loc.column) == (3, 1)
    assert error.message.startswith("schema is not valid YAML: ")


def test_yaml_tags_are_not_executed(write: Write) -> None:
    path = write("schema.yaml", "context: {a: !!python/object/apply:os.system [echo hi]}\n")
    (error,) = schema_errors(path)
    assert "error[schema_type]" in error


def test_schema_not_utf8_is_a_load_error(write: Write) -> None:
    path = write("schema.yaml", b"context: {ip: str\xffing}\n")
    with pytest.raises(PolicyLoadError):
        load_schema(path)


def test_schema_errors_come_in_file_order(write: Write) -> None:
    path = write("schema.yaml", "subjects:\n  user: 5\nextra: 1\nresources:\n  doc: 5\n")
    with pytest.raises(PolicyLoadError) as info:
        load_schema(path)
    lines = [e.loc.line for e in info.value.errors if e.loc]
    assert lines == sorted(lines)


# --- policies checked against a schema ---------------------------------------------

SCHEMA = Schema(
    subjects={"user": {"tenant": "string", "level": "int"}, "service": {"level": "string"}},
    resources={
        "doc": {
            "owner": "string",
            "archived": "bool",
            "tags": "list",
            "meta": "record",
            "size": "number",
        }
    },
    context={"ip": "string"},
)


def check(expr: str, rtype: str = "doc") -> list[str]:
    text = f"resource {rtype} {{\n  actions read\n  permit any to read when {expr}\n}}\n"
    return [p.code for p in load_texts({"t.pdp": text}, SCHEMA).problems]


@pytest.mark.parametrize(
    "expr",
    [
        "resource.owner == subject.id",
        "not resource.archived",
        'resource.tags contains "x"',
        "resource.meta.anything.deeper == 1",
        "resource.size > 1 and resource.size < 2.5",
        'in_cidr(context.ip, "10.0.0.0/8")',
        'subject.tenant == "acme"',
        # `level` is an int for users and a string for services: any
        'subject.level == 1 or subject.level == "x"',
        "resource has owner and resource.owner == subject.id",
        'resource.id == "1" and resource.type == "doc"',
    ],
)
def test_schema_accepts(expr: str) -> None:
    assert check(expr) == []


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("resource.ownr == subject.id", ["unknown_attribute"]),
        ('context.address == "x"', ["unknown_attribute"]),
        ('subject.tenat == "x"', ["unknown_attribute"]),
        ('resource.archived == "no"', ["type_mismatch"]),
        ("resource.owner.name == 1", ["type_mismatch"]),
        ("resource.archived and resource.owner", ["type_mismatch"]),
        ("resource.tags > 1", ["type_mismatch"]),
        # a typo in a `has` guard would silently switch it off
        ("resource has ownr", ["unknown_attribute"]),
        ("resource.owner", ["not_boolean"]),
        ("resource.size == true", ["type_mismatch"]),
    ],
)
def test_schema_rejects(expr: str, expected: list[str]) -> None:
    assert check(expr) == expected


def test_resource_types_outside_the_schema_are_untyped() -> None:
    assert check("resource.whatever == 1", rtype="image") == []


def test_derived_roles_are_checked_against_their_resource_type() -> None:
    text = (
        "derived role owner on doc when resource.ownr == subject.id\n"
        "resource doc {\n  actions read\n}\n"
    )
    result = load_texts({"t.pdp": text}, SCHEMA)
    assert [p.code for p in result.problems] == ["unknown_attribute"]
    assert result.problems[0].message == (
        "`resource.ownr` is not in the schema for resource type `doc`"
    )


def test_one_mistake_one_error() -> None:
    assert check("resource.tags > 1") == ["type_mismatch"]


def test_has_guards_are_checked_against_the_schema() -> None:
    text = "resource doc {\n  actions read\n  forbid any to read when resource has lockd\n}\n"
    (error,) = load_texts({"t.pdp": text}, SCHEMA).problems
    assert (error.code, error.message) == (
        "unknown_attribute",
        "`resource.lockd` is not in the schema for resource type `doc`",
    )
    assert error.loc is not None and (error.loc.line, error.loc.column) == (3, 27)


@pytest.mark.parametrize(
    ("expr", "message", "help"),
    [
        (
            "subject has tenat",
            "`subject.tenat` is not in the schema for any subject type",
            "did you mean `tenant`?",
        ),
        ("context has adress", "`context.adress` is not in the schema for the context", None),
    ],
)
def test_has_guards_on_subject_and_context(expr: str, message: str, help: str | None) -> None:
    text = f"resource doc {{\n  actions read\n  permit any to read when {expr}\n}}\n"
    (error,) = load_texts({"t.pdp": text}, SCHEMA).problems
    assert (error.code, error.message, error.help) == ("unknown_attribute", message, help)


def test_has_guards_are_free_without_a_schema_for_the_type() -> None:
    assert check("resource has lockd", rtype="image") == []
    text = "resource doc {\n  actions read\n  permit any to read when resource has lockd\n}\n"
    assert load_texts({"t.pdp": text}).problems == ()
