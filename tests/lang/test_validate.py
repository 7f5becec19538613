"""Meaning checks: names, duplicates, cycles, derived roles, types, dead rules."""

from __future__ import annotations

import pytest

from tests.helpers import codes, load, load_files


def in_resource(body: str, head: str = "") -> str:
    return f"{head}resource doc {{\n  actions read, update\n{body}}}\n"


def condition(expr: str, head: str = "") -> str:
    return in_resource(f"  permit any to read when {expr}\n", head)


def problems(text: str) -> list[tuple[str, str]]:
    return [(p.code, p.message) for p in load(text).problems]


# --- roles -------------------------------------------------------------------------


def test_a_clean_policy_set_has_no_problems() -> None:
    text = (
        "role viewer\n"
        "role editor : viewer\n"
        "role admin : editor\n"
        "derived role owner on document when resource.owner == subject.id\n"
        "resource document {\n"
        "  actions read, update, delete, share\n"
        "  permit viewer to read\n"
        "  permit editor to update unless resource.archived\n"
        "  permit owner to read, update, delete\n"
        "  permit admin to *\n"
        "  permit any to read when resource.public\n"
        "  forbid any to update, delete when resource has locked and resource.locked\n"
        '  @id("tenant-isolation")\n'
        "  forbid any to * unless resource.tenant == subject.tenant\n"
        "}\n"
    )
    result = load(text)
    assert result.problems == ()
    assert result.policy_set is not None
    assert len(result.policy_set.rules) == 7


def test_roles_may_be_declared_in_any_file_and_order() -> None:
    result = load_files(
        {
            "z.pdp": "role viewer\n",
            "a.pdp": "role admin : editor\nrole editor : viewer\n"
            "resource d {\n  actions a\n  permit admin to a\n}\n",
        }
    )
    assert result.problems == ()


def test_self_inclusion_is_a_cycle() -> None:
    assert problems("role a : a\n") == [
        ("role_cycle", "roles include each other in a cycle: `a` → `a`")
    ]


def test_each_cycle_is_reported_once() -> None:
    text = "role a : b\nrole b : a\nrole c : d\nrole d : c\nrole e : a, c\n"
    assert codes(load(text)) == ["role_cycle", "role_cycle"]


def test_diamond_inclusion_is_not_a_cycle() -> None:
    text = "role base\nrole left : base\nrole right : base\nrole top : left, right\n"
    assert load(text).problems == ()


def test_a_very_long_inclusion_chain_is_fine() -> None:
    n = 5000
    text = "role r0\n" + "".join(f"role r{i} : r{i - 1}\n" for i in range(1, n))
    assert load(text).problems == ()


def test_a_very_long_cycle_is_found() -> None:
    n = 5000
    text = f"role r0 : r{n - 1}\n" + "".join(f"role r{i} : r{i - 1}\n" for i in range(1, n))
    assert codes(load(text)) == ["role_cycle"]


def test_unknown_included_role_suggests_a_close_name() -> None:
    result = load("role viewer\nrole editor : veiwer\n")
    (error,) = result.errors
    assert error.code == "unknown_role"
    assert error.help == "did you mean `viewer`?"


def test_unknown_role_in_rule_may_suggest_a_derived_role() -> None:
    text = in_resource(
        "  permit ownr to read\n",
        head="derived role owner on doc when resource.owner == subject.id\n",
    )
    (error,) = load(text).errors
    assert (error.code, error.help) == ("unknown_role", "did you mean `owner`?")


def test_reserved_any_is_still_usable_in_rules() -> None:
    assert load(in_resource("  permit any to read\n")).problems == ()


KEYWORDS = (
    "role derived on when unless resource actions permit forbid any to and or not in "
    "contains has true false subject context action"
).split()


@pytest.mark.parametrize("keyword", KEYWORDS)
@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("role {0}\n", "a role"),
        ("derived role {0} on doc when true\nresource doc {{ actions a }}\n", "a derived role"),
        ("resource {0} {{\n  actions a\n}}\n", "a resource type"),
        ("resource doc {{\n  actions a, {0}\n}}\n", "an action"),
    ],
    ids=["role", "derived-role", "resource-type", "action"],
)
def test_keywords_cannot_name_anything(keyword: str, template: str, kind: str) -> None:
    assert problems(template.format(keyword)) == [
        ("reserved_name", f"`{keyword}` is a keyword and cannot name {kind}")
    ]


def test_keywords_are_still_attribute_names() -> None:
    expr = 'resource.action == "x" and context.subject == 1 and resource.to == subject.role'
    assert load(condition(expr)).problems == ()


# --- resources and actions ---------------------------------------------------------


def test_duplicate_resource_across_files() -> None:
    result = load_files(
        {
            "a.pdp": "resource doc {\n  actions read\n}\n",
            "b.pdp": "resource doc {\n  actions read\n}\n",
        }
    )
    (error,) = result.errors
    assert error.code == "duplicate_resource"
    assert error.loc is not None and error.loc.file == "b.pdp"
    assert error.help == "first declared at a.pdp:1:10; keep one block per resource type"


def test_unknown_action_lists_the_declared_ones_when_nothing_is_close() -> None:
    (error,) = load(in_resource("  permit any to zap\n")).errors
    assert error.help == "declared: `read`, `update`"


def test_star_covers_every_action_without_naming_one() -> None:
    assert load(in_resource("  permit any to *\n")).problems == ()


def test_actions_of_another_resource_are_unknown_here() -> None:
    text = "resource a {\n  actions x\n}\nresource b {\n  actions y\n  permit any to x\n}\n"
    assert problems(text) == [("unknown_action", "action `x` is not declared on resource `b`")]


# --- derived roles -----------------------------------------------------------------


def test_the_same_derived_role_may_be_defined_on_several_types() -> None:
    text = (
        "derived role owner on doc when resource.owner == subject.id\n"
        "derived role owner on folder when resource.creator == subject.id\n"
        "resource doc {\n  actions read\n  permit owner to read\n}\n"
        "resource folder {\n  actions list\n  permit owner to list\n}\n"
    )
    assert load(text).problems == ()


def test_derived_role_wrong_resource_lists_where_it_is_defined() -> None:
    text = (
        "derived role owner on a when true\n"
        "derived role owner on b when true\n"
        "resource a {\n  actions x\n}\n"
        "resource b {\n  actions x\n}\n"
        "resource c {\n  actions x\n  permit owner to x\n}\n"
    )
    (error,) = load(text).errors
    assert error.code == "derived_role_wrong_resource"
    assert error.help == "it is defined on `a`, `b`"


def test_duplicate_derived_role() -> None:
    text = (
        "derived role owner on doc when true\n"
        "derived role owner on doc when resource.x\n"
        "resource doc {\n  actions read\n}\n"
    )
    assert problems(text) == [
        ("duplicate_derived_role", "derived role `owner` on `doc` is declared twice")
    ]


def test_derived_role_condition_is_type_checked() -> None:
    text = "derived role owner on doc when 1\nresource doc {\n  actions read\n}\n"
    assert problems(text) == [("not_boolean", "a condition must be true or false, this is an int")]


def test_derived_role_on_unknown_resource_and_clash_are_both_reported() -> None:
    text = "role owner\nderived role owner on nowhere when true\n"
    assert sorted(codes(load(text))) == ["derived_role_clash", "unknown_resource"]


# --- rule ids and annotations ------------------------------------------------------


def test_duplicate_rule_id_across_files() -> None:
    rule = 'resource {0} {{\n  actions a\n  @id("same")\n  permit any to a\n}}\n'
    result = load_files({"one.pdp": rule.format("x"), "two.pdp": rule.format("y")})
    (error,) = result.errors
    assert error.code == "duplicate_rule_id"
    assert error.loc is not None and (error.loc.file, error.loc.line) == ("two.pdp", 3)
    # the id is reported where it is written; the first use is the rule's `permit` line
    assert error.help == "first used at one.pdp:4"


def test_a_duplicate_automatic_id_explains_the_naming() -> None:
    text = in_resource("  permit any to read  permit any to update\n")
    (error,) = load(text).errors
    assert error.code == "duplicate_rule_id"
    assert error.help == (
        "first used at test.pdp:3; rules without `@id` are named `file:line`: "
        "give each its own line or an `@id`"
    )


def test_a_duplicate_explicit_id_does_not_mention_automatic_ids() -> None:
    text = in_resource('  @id("x")\n  permit any to read\n  @id("x")\n  permit any to update\n')
    (error,) = load(text).errors
    assert error.help == "first used at test.pdp:4"


@pytest.mark.parametrize("name", ["id", "description", "owner"])
def test_known_annotations(name: str) -> None:
    text = in_resource(f'  @{name}("x")\n  permit any to read\n')
    assert load(text).problems == ()


def test_unknown_annotation_is_a_warning_only() -> None:
    result = load(in_resource('  @severity("high")\n  permit any to read\n'))
    assert codes(result) == ["unknown_annotation"]
    assert result.warnings[0].help is None
    assert result.policy_set is not None


# --- types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        'time("2020-01-01") < now()',
        'time("2026-01-01T00:00:00+02:00") <= now()',
        "hour(now()) > 8",
        "weekday(now()) == 1",
        'days_between(now(), time("2030-01-01")) > 1.5',
        'size("abc") == 3',
        "size(resource.tags) >= 1.5",
        'in_cidr("10.0.0.1", "10.0.0.0/8")',
        'in_cidr(context.ip, "2001:db8::/32")',
        "in_cidr(context.ip, context.net)",
        "is_ip(context.ip)",
        'upper("a") < "b"',
        'startswith(lower(subject.id), "adm")',
        "now() == now()",
        "1 == 1.0",
        "2 > 1.5",
        "[1] == [1]",
        '"a" in ["a", 1]',
        "resource.x in resource.y",
        "resource.tags contains resource.x",
        '"abc" contains "b"',
        "context has ip",
        "resource.meta has x",
        'action.name == "read"',
        'resource.type == "doc" and subject.type == "user"',
        "resource.x == subject",
        "not resource.x",
        "(resource.a)",
        "resource.a.b.c == 1",
        "true",
    ],
)
def test_well_typed_conditions(expr: str) -> None:
    assert load(condition(expr)).problems == ()


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("not 1", [("type_mismatch", "`not` needs a bool, this is an int")]),
        ("1 and true", [("type_mismatch", "`and` needs a bool, this is an int")]),
        ('true or "x"', [("type_mismatch", "`or` needs a bool, this is a string")]),
        ('"a" < 1', [("type_mismatch", "`<` cannot compare a string with an int")]),
        (
            "[1] < [2]",
            [("type_mismatch", "`<` compares numbers, strings or times, not a list")] * 2,
        ),
        # one mistake, one error: on the list, not again on the comparison
        ("[1] > 1", [("type_mismatch", "`>` compares numbers, strings or times, not a list")]),
        ("1 < [1]", [("type_mismatch", "`<` compares numbers, strings or times, not a list")]),
        ("now() < 5", [("type_mismatch", "`<` cannot compare a time with an int")]),
        ("1 in 2", [("type_mismatch", "`in` needs a list on its right, this is an int")]),
        (
            "1 contains 1",
            [("type_mismatch", "`contains` needs a list or string on its left, this is an int")],
        ),
        (
            '"abc" contains 1',
            [("type_mismatch", "a string can only contain a string, this is an int")],
        ),
        ("1 has x", [("type_mismatch", "`has` needs a record on its left, this is an int")]),
        (
            "subject.id has x",
            [("type_mismatch", "`has` needs a record on its left, this is a string")],
        ),
        (
            "subject.id.x == 1",
            [("type_mismatch", "`subject.id` is a string, it has no attributes")],
        ),
        (
            "action.name.x == 1",
            [("type_mismatch", "`action.name` is a string, it has no attributes")],
        ),
        ("subject == 1", [("type_mismatch", "comparing a record with an int is always false")]),
        ("1 != true", [("type_mismatch", "comparing an int with a bool is always true")]),
        (
            'startswith(1, "a")',
            [("type_mismatch", "argument of `startswith` needs a string, this is an int")],
        ),
        (
            'hour("x") == 1',
            [("type_mismatch", "argument of `hour` needs a time, this is a string")],
        ),
        (
            'lower(1) == "a"',
            [("type_mismatch", "argument of `lower` needs a string, this is an int")],
        ),
        (
            'time("2026-13-01") < now()',
            [("invalid_argument", "`2026-13-01` is not an ISO 8601 time")],
        ),
        (
            'in_cidr(context.ip, "10.0.0.0/40")',
            [("invalid_argument", "`10.0.0.0/40` is not a network such as `10.0.0.0/8`")],
        ),
        ("now(1) < now()", [("wrong_arguments", "`now` takes 0 arguments, not 1")]),
        ("is_ip()", [("wrong_arguments", "`is_ip` takes 1 argument, not 0")]),
        ('"text"', [("not_boolean", "a condition must be true or false, this is a string")]),
        ("[true]", [("not_boolean", "a condition must be true or false, this is a list")]),
        ("now()", [("not_boolean", "a condition must be true or false, this is a time")]),
        ("nope(1)", [("unknown_function", "function `nope` does not exist")]),
    ],
)
def test_ill_typed_conditions(expr: str, expected: list[tuple[str, str]]) -> None:
    assert problems(condition(expr)) == expected


def test_unless_conditions_are_checked_too() -> None:
    text = in_resource("  permit any to read unless 1\n")
    assert codes(load(text)) == ["not_boolean"]


def test_arguments_of_an_unknown_function_are_still_checked() -> None:
    assert sorted(codes(load(condition("nope(not 1)")))) == ["type_mismatch", "unknown_function"]


def test_every_problem_of_a_run_is_reported_together() -> None:
    text = (
        "role viewer\n"
        "role viewer\n"
        "role a : nobody\n"
        "resource doc {\n"
        "  actions read\n"
        "  permit viewr to read\n"
        "  permit viewer to raed\n"
        "  permit viewer to read when 1\n"
        "}\n"
    )
    assert codes(load(text)) == [
        "duplicate_role",
        "unknown_role",
        "unknown_role",
        "unknown_action",
        "not_boolean",
    ]


def test_validation_waits_for_a_clean_parse() -> None:
    # a syntax error anywhere: no meaning errors, which would be noise
    result = load_files({"a.pdp": "role a : nobody\n", "b.pdp": "role\n"})
    assert codes(result) == ["unexpected_end"]


# --- dead rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    "clauses",
    [
        "when false",
        "unless true",
        "when not true",
        "when true and false",
        "when false or false",
        "when resource.x and false",
        "when resource.x unless true",
        "when (false)",
    ],
)
def test_never_applies(clauses: str) -> None:
    result = load(in_resource(f"  permit any to read {clauses}\n"))
    assert codes(result) == ["never_applies"]
    assert result.warnings[0].message == (
        "rule `test.pdp:3` can never apply: its condition is always false"
    )


@pytest.mark.parametrize(
    "clauses",
    ["when true", "unless false", "when resource.x or true", "when resource.x", "when not false"],
)
def test_may_apply(clauses: str) -> None:
    assert load(in_resource(f"  permit any to read {clauses}\n")).problems == ()


def test_unreachable_permit_under_unconditional_forbid() -> None:
    text = in_resource("  permit any to read\n  forbid any to read, update\n")
    assert problems(text) == [
        (
            "unreachable",
            "rule `test.pdp:3` can never allow: forbid `test.pdp:4` always denies its actions",
        )
    ]


def test_dead_rules_are_placed_at_the_effect_below_their_annotations() -> None:
    text = in_resource(
        '  @description("dead")\n  permit any to read when false\n'
        '  @owner("me")\n  permit any to update\n  forbid any to update\n'
    )
    result = load(text)
    assert [(w.code, w.loc.line if w.loc else None) for w in result.warnings] == [
        ("never_applies", 4),
        ("unreachable", 6),
    ]
    assert [w.message for w in result.warnings] == [
        "rule `test.pdp:4` can never apply: its condition is always false",
        "rule `test.pdp:6` can never allow: forbid `test.pdp:7` always denies its actions",
    ]


@pytest.mark.parametrize(
    "forbid",
    [
        "forbid any to read when resource.locked",
        "forbid any to read unless resource.open",
        "forbid viewer to read",
        "forbid any to update",
    ],
)
def test_reachable_permits(forbid: str) -> None:
    text = in_resource(f"  permit viewer to read\n  {forbid}\n", head="role viewer\n")
    assert load(text).problems == ()


def test_partly_blocked_permit_is_reachable() -> None:
    text = in_resource("  permit any to *\n  forbid any to read\n")
    assert load(text).problems == ()
