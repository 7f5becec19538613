"""Every grammar construct parses into the expected AST; syntax errors recover."""

from __future__ import annotations

import pytest

from pdp.lang import ast
from pdp.lang.ast import (
    Annotation,
    BoolOp,
    Call,
    Compare,
    DerivedRoleDecl,
    Effect,
    Has,
    Ident,
    ListExpr,
    Literal,
    Not,
    Path,
    ResourceDecl,
    RoleDecl,
    Rule,
)
from pdp.lang.errors import render_all
from pdp.lang.parse import decode, parse
from pdp.lang.source import SourceLoc
from pdp.lang.to_ast import to_ast
from tests.helpers import codes, load, load_files


def parse_file(text: str, name: str = "test.pdp") -> ast.PolicyFile:
    """Text → AST without validation; fails on any syntax or escape error."""
    src, errors = decode(name, text.encode())
    assert src is not None and not errors
    tree, errors = parse(src)
    assert tree is not None, render_all(errors)
    pfile, errors = to_ast(src, tree)
    assert not errors, render_all(errors)
    return pfile


def cond(expr: str) -> ast.Expr:
    """The AST of one condition expression."""
    pfile = parse_file(f"resource doc {{\n  actions read\n  permit any to read when {expr}\n}}\n")
    when = pfile.resources[0].rules[0].when
    assert when is not None
    return when


def names(*ns: str) -> tuple[Ident, ...]:
    return tuple(Ident(n) for n in ns)


def p(dotted: str) -> Path:
    root, *attrs = dotted.split(".")
    return Path(root, tuple(attrs))


def lit(v: ast.LiteralValue) -> Literal:
    return Literal(v)


# --- declarations ------------------------------------------------------------------


def test_role_declarations() -> None:
    f = parse_file("role viewer\nrole editor : viewer\nrole admin: editor, auditor\n")
    assert f.roles == (
        RoleDecl(Ident("viewer"), ()),
        RoleDecl(Ident("editor"), names("viewer")),
        RoleDecl(Ident("admin"), names("editor", "auditor")),
    )
    assert f.derived_roles == () and f.resources == ()
    assert f.name == "test.pdp"


def test_names_may_hold_dashes_and_underscores() -> None:
    f = parse_file("role can-edit_2\nrole _hidden : can-edit_2\n")
    assert f.roles == (
        RoleDecl(Ident("can-edit_2"), ()),
        RoleDecl(Ident("_hidden"), names("can-edit_2")),
    )


def test_derived_role_declaration() -> None:
    f = parse_file("derived role owner on document when resource.owner == subject.id\n")
    assert f.derived_roles == (
        DerivedRoleDecl(
            Ident("owner"),
            Ident("document"),
            Compare("==", p("resource.owner"), p("subject.id")),
        ),
    )


def test_resource_with_actions_and_rules() -> None:
    f = parse_file(
        "resource document {\n"
        "  actions read, update\n"
        "  actions delete\n"
        "  permit viewer, editor to read\n"
        "  forbid any to * when resource.locked\n"
        "}\n"
    )
    (res,) = f.resources
    assert res.name == Ident("document")
    assert res.actions == names("read", "update", "delete")
    assert res.rules == (
        Rule("test.pdp:4", Effect.PERMIT, names("viewer", "editor"), names("read"), None, None),
        Rule("test.pdp:5", Effect.FORBID, None, None, p("resource.locked"), None),
    )


def test_empty_resource_block_parses() -> None:
    f = parse_file("resource document {}\n")
    assert f.resources == (ResourceDecl(Ident("document"), (), ()),)


def test_when_and_unless_together() -> None:
    f = parse_file(
        "resource d {\n  actions a\n  permit any to a when resource.x unless resource.y\n}\n"
    )
    rule = f.resources[0].rules[0]
    assert rule.when == p("resource.x")
    assert rule.unless == p("resource.y")


def test_unless_alone() -> None:
    f = parse_file("resource d {\n  actions a\n  permit any to a unless resource.y\n}\n")
    rule = f.resources[0].rules[0]
    assert rule.when is None
    assert rule.unless == p("resource.y")


def test_annotations_and_explicit_id() -> None:
    f = parse_file(
        "resource d {\n"
        "  actions a\n"
        '  @id("tenant-isolation")\n'
        '  @description("keeps tenants apart")\n'
        "  forbid any to *\n"
        "}\n"
    )
    rule = f.resources[0].rules[0]
    assert rule.id == "tenant-isolation"
    assert rule.annotations == (
        Annotation(Ident("id"), "tenant-isolation"),
        Annotation(Ident("description"), "keeps tenants apart"),
    )


def test_annotations_on_one_line_with_the_rule() -> None:
    f = parse_file('resource d {\n  actions a\n  @id("x") @owner("sec") permit any to a\n}\n')
    rule = f.resources[0].rules[0]
    assert rule.id == "x"
    assert [a.name.name for a in rule.annotations] == ["id", "owner"]


def test_rule_id_without_annotation_is_file_and_line_of_the_effect() -> None:
    f = parse_file(
        'resource d {\n  actions a\n  @owner("x")\n  permit any to a\n}\n', name="dir/docs.pdp"
    )
    assert f.resources[0].rules[0].id == "dir/docs.pdp:4"


def test_rule_location_starts_at_the_effect_not_the_annotations() -> None:
    f = parse_file(
        'resource d {\n  actions a\n  @id("x")\n  @owner("me")\n  permit any to a\n'
        '  @id("y") forbid any to a\n}\n'
    )
    first, second = f.resources[0].rules
    assert first.loc == SourceLoc("test.pdp", 5, 3, 5, 18)
    assert first.annotations[0].loc == SourceLoc("test.pdp", 3, 3, 3, 11)
    assert second.loc == SourceLoc("test.pdp", 6, 12, 6, 27)


def test_optional_semicolons() -> None:
    with_semis = parse_file(
        "role a; role b : a;\nresource d { actions x; permit a to x; forbid any to x; }\n"
    )
    without = parse_file(
        "role a\nrole b : a\nresource d {\n actions x\n permit a to x\n forbid any to x\n}\n"
    )
    assert with_semis.roles == without.roles
    assert [(r.effect, r.roles) for r in with_semis.resources[0].rules] == [
        (r.effect, r.roles) for r in without.resources[0].rules
    ]


def test_everything_on_one_line() -> None:
    f = parse_file("role a resource d { actions x permit a to x }")
    assert f.roles == (RoleDecl(Ident("a"), ()),)
    assert f.resources[0].rules[0].roles == names("a")


def test_comments_are_ignored() -> None:
    f = parse_file(
        "# a file comment\n"
        "role a # trailing\n"
        "resource d { # here too\n"
        "  actions x # and here\n"
        '  permit a to x when resource.s == "# not a comment" # but this is\n'
        "}\n"
        "# the end"
    )
    assert f.roles == (RoleDecl(Ident("a"), ()),)
    assert f.resources[0].rules[0].when == Compare("==", p("resource.s"), lit("# not a comment"))


def test_empty_and_comment_only_files_parse_to_nothing() -> None:
    for text in ("", "\n\n", "# nothing here\n   \n"):
        f = parse_file(text)
        assert (f.roles, f.derived_roles, f.resources) == ((), (), ())


def test_windows_line_endings_and_tabs() -> None:
    f = parse_file("role a\r\nresource d {\r\n\tactions x\r\n\tpermit a to x\r\n}\r\n")
    assert f.resources[0].rules[0].id == "test.pdp:4"


def test_byte_order_mark_is_skipped() -> None:
    result = load(b"\xef\xbb\xbfrole a\n")
    assert result.errors == ()
    assert result.policy_set is not None
    assert result.policy_set.roles == (RoleDecl(Ident("a"), ()),)


# --- expressions: literals ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("42", 42),
        ("0", 0),
        ("-7", -7),
        ("1.5", 1.5),
        ("-1.5", -1.5),
        ("2e3", 2000.0),
        ("2E3", 2000.0),
        ("1.5e-2", 0.015),
        ("-3e+2", -300.0),
        ("true", True),
        ("false", False),
        ('""', ""),
        ('"plain"', "plain"),
    ],
)
def test_literals(source: str, value: object) -> None:
    e = cond(f"resource.x == {source}")
    assert isinstance(e, Compare)
    assert isinstance(e.right, Literal)
    assert e.right.value == value
    assert type(e.right.value) is type(value)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"a\nb"', "a\nb"),
        (r'"a\tb"', "a\tb"),
        (r'"a\rb"', "a\rb"),
        (r'"a\0b"', "a\0b"),
        (r'"\u{1F600}"', "\U0001f600"),
        (r'"\u{e9}t\u{E9}"', "\u00e9t\u00e9"),
        (r'"\u{41}"', "A"),
        ('"ünïcödé ✓"', "ünïcödé ✓"),
    ],
)
def test_string_escapes(source: str, value: str) -> None:
    e = cond(f"resource.x == {source}")
    assert isinstance(e, Compare)
    assert e.right == Literal(value)


def test_escapes_in_annotations() -> None:
    f = parse_file('resource d {\n  actions a\n  @id("a\\"b\\u{21}")\n  permit any to a\n}\n')
    assert f.resources[0].rules[0].id == 'a"b!'


def test_list_literals() -> None:
    assert cond("resource.x in []") == Compare("in", p("resource.x"), ListExpr(()))
    assert cond('resource.x in [1, "a", true, resource.y]') == Compare(
        "in",
        p("resource.x"),
        ListExpr((lit(1), lit("a"), lit(True), p("resource.y"))),
    )
    assert cond("[[1], []] contains [1]") == Compare(
        "contains",
        ListExpr((ListExpr((lit(1),)), ListExpr(()))),
        ListExpr((lit(1),)),
    )


# --- expressions: paths, calls, operators ------------------------------------------


@pytest.mark.parametrize(
    ("source", "root", "attrs"),
    [
        ("subject", "subject", ()),
        ("subject.id", "subject", ("id",)),
        ("resource.owner", "resource", ("owner",)),
        ("context.request.ip", "context", ("request", "ip")),
        ("action.name", "action", ("name",)),
        ("resource.a.b.c.d", "resource", ("a", "b", "c", "d")),
        # keywords after a dot are plain attribute names
        ("resource.in", "resource", ("in",)),
        ("resource.role", "resource", ("role",)),
        ("context.action", "context", ("action",)),
        ("resource.my-attr", "resource", ("my-attr",)),
    ],
)
def test_paths(source: str, root: str, attrs: tuple[str, ...]) -> None:
    e = cond(f"{source} == 1")
    assert isinstance(e, Compare)
    assert e.left == Path(root, attrs)
    assert str(e.left) == source


def test_function_calls() -> None:
    assert cond("now() > time(resource.t)") == Compare(
        ">", Call("now", ()), Call("time", (p("resource.t"),))
    )
    assert cond('startswith(lower(subject.id), "a")') == Call(
        "startswith", (Call("lower", (p("subject.id"),)), lit("a"))
    )
    # a call with an unknown name still parses; validation reports it
    assert cond("nope(1, 2, 3)") == Call("nope", (lit(1), lit(2), lit(3)))


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_comparison_operators(op: str) -> None:
    assert cond(f"resource.a {op} 3") == Compare(op, p("resource.a"), lit(3))


def test_in_contains_has() -> None:
    assert cond('subject.id in ["a", "b"]') == Compare(
        "in", p("subject.id"), ListExpr((lit("a"), lit("b")))
    )
    assert cond('resource.tags contains "x"') == Compare("contains", p("resource.tags"), lit("x"))
    assert cond("resource has owner") == Has(p("resource"), "owner")
    assert cond("resource.meta has labels") == Has(p("resource.meta"), "labels")


def test_and_or_chains_are_flat() -> None:
    a, b, c = p("resource.a"), p("resource.b"), p("resource.c")
    assert cond("resource.a and resource.b and resource.c") == BoolOp("and", (a, b, c))
    assert cond("resource.a or resource.b or resource.c") == BoolOp("or", (a, b, c))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # or < and < not < comparison
        (
            "not resource.a and resource.b or resource.c",
            BoolOp("or", (BoolOp("and", (Not(p("resource.a")), p("resource.b"))), p("resource.c"))),
        ),
        (
            "resource.a or resource.b and resource.c",
            BoolOp("or", (p("resource.a"), BoolOp("and", (p("resource.b"), p("resource.c"))))),
        ),
        (
            "resource.a and resource.b or resource.c and resource.d",
            BoolOp(
                "or",
                (
                    BoolOp("and", (p("resource.a"), p("resource.b"))),
                    BoolOp("and", (p("resource.c"), p("resource.d"))),
                ),
            ),
        ),
        ("not resource.a == 1", Not(Compare("==", p("resource.a"), lit(1)))),
        ("not not resource.a", Not(Not(p("resource.a")))),
        (
            "not resource has x and resource.y in []",
            BoolOp(
                "and",
                (Not(Has(p("resource"), "x")), Compare("in", p("resource.y"), ListExpr(()))),
            ),
        ),
        (
            "(resource.a or resource.b) and resource.c",
            BoolOp("and", (BoolOp("or", (p("resource.a"), p("resource.b"))), p("resource.c"))),
        ),
        ("not (resource.a or resource.b)", Not(BoolOp("or", (p("resource.a"), p("resource.b"))))),
        ("((resource.a))", p("resource.a")),
    ],
)
def test_precedence(source: str, expected: ast.Expr) -> None:
    assert cond(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "resource.a == 1 == 2",
        "resource.a < resource.b < resource.c",
        "resource.a in [] in []",
        "resource has a has b",
    ],
)
def test_comparisons_do_not_chain(source: str) -> None:
    text = f"resource d {{\n  actions a\n  permit any to a when {source}\n}}\n"
    assert codes(load(text)) == ["unexpected_token"]


# --- locations ---------------------------------------------------------------------


def test_locations_do_not_take_part_in_equality() -> None:
    here = SourceLoc("a.pdp", 1, 1, 1, 2)
    there = SourceLoc("b.pdp", 9, 9, 9, 12)
    assert Ident("x", here) == Ident("x", there)
    assert hash(Literal(1, here)) == hash(Literal(1, there))
    assert Ident("x", here) != Ident("y", here)


def test_locations_of_nodes() -> None:
    f = parse_file(
        "role viewer\n"
        "role editor : viewer\n"
        "resource doc {\n"
        "  actions read\n"
        '  permit editor to read when resource.x == "abc"\n'
        "}\n"
    )
    editor = f.roles[1]
    assert editor.loc == SourceLoc("test.pdp", 2, 1, 2, 21)
    assert editor.name.loc == SourceLoc("test.pdp", 2, 6, 2, 12)
    assert editor.includes[0].loc == SourceLoc("test.pdp", 2, 15, 2, 21)
    res = f.resources[0]
    assert res.loc == SourceLoc("test.pdp", 3, 1, 6, 2)
    assert res.actions[0].loc == SourceLoc("test.pdp", 4, 11, 4, 15)
    rule = res.rules[0]
    assert rule.loc == SourceLoc("test.pdp", 5, 3, 5, 49)
    assert rule.roles is not None and rule.roles[0].loc == SourceLoc("test.pdp", 5, 10, 5, 16)
    assert isinstance(rule.when, Compare)
    assert rule.when.loc == SourceLoc("test.pdp", 5, 30, 5, 49)
    assert rule.when.left.loc == SourceLoc("test.pdp", 5, 30, 5, 40)
    assert rule.when.right.loc == SourceLoc("test.pdp", 5, 44, 5, 49)


# --- multi-file sets ---------------------------------------------------------------


def test_policy_set_of_several_files() -> None:
    result = load_files(
        {
            "b/docs.pdp": "resource doc {\n  actions read\n  permit viewer to read\n}\n",
            "a-roles.pdp": "role viewer\n",
        }
    )
    assert result.errors == ()
    ps = result.policy_set
    assert ps is not None
    assert [f.name for f in ps.files] == ["a-roles.pdp", "b/docs.pdp"]
    assert ps.roles == (RoleDecl(Ident("viewer"), ()),)
    assert [r.id for r in ps.rules] == ["b/docs.pdp:3"]
    assert ps.version.startswith("sha256:")


def test_errors_in_several_files_are_all_reported() -> None:
    result = load_files({"one.pdp": "role\n", "two.pdp": "resource {\n"})
    assert [(e.loc.file if e.loc else None) for e in result.errors] == ["one.pdp", "two.pdp"]
    assert result.policy_set is None


# --- syntax errors and recovery ----------------------------------------------------


def locs(text: str) -> list[tuple[str, int, int]]:
    return [(e.code, e.loc.line, e.loc.column) for e in load(text).problems if e.loc]


def test_recovery_reports_each_broken_rule_once() -> None:
    text = (
        "role r\n"  # 1
        "resource doc {\n"  # 2
        "  actions read, update\n"  # 3
        "  permit r read\n"  # 4: missing `to`
        "  permit r to read\n"  # 5: fine
        "  permit r to update when resource.a = 1\n"  # 6: `=`
        "  permit r to read when\n"  # 7: no condition
        "  forbid any to update\n"  # 8: fine
        "}\n"
    )
    assert locs(text) == [
        ("unexpected_token", 4, 12),
        ("unexpected_character", 6, 38),
        ("unfinished", 8, 3),
    ]


def test_recovery_across_declarations() -> None:
    text = (
        "role a :\n"  # 1: unfinished inclusion
        "role b\n"  # 2
        "derived role x on doc when\n"  # 3: no condition
        "role c\n"  # 4
        "resource doc {\n"  # 5
        "  actions read\n"  # 6
        "  permit b to $\n"  # 7
        "}\n"
    )
    assert locs(text) == [
        ("unfinished", 2, 1),
        ("unfinished", 4, 1),
        ("unexpected_character", 7, 15),
    ]


def test_recovery_when_the_next_statement_starts_with_resource() -> None:
    text = (
        "derived role x on doc when\n"  # 1: no condition
        "resource doc {\n"  # 2
        "  actions read\n"  # 3
        "  permit any to $\n"  # 4
        "}\n"
    )
    assert locs(text) == [("unfinished", 2, 1), ("unexpected_character", 4, 17)]


def test_unterminated_string_does_not_swallow_the_rest() -> None:
    text = (
        "resource doc {\n"
        "  actions read\n"
        '  permit any to read when resource.a == "abc\n'
        "  permit any to read when resource.b ==\n"
        "}\n"
    )
    assert locs(text) == [("unterminated_string", 3, 41), ("unexpected_token", 5, 1)]


def test_unexpected_end_is_not_reported_as_an_echo_of_an_earlier_error() -> None:
    text = "role r\nresource doc {\n  actions read\n  permit r to $\n"
    assert codes(load(text)) == ["unexpected_character"]


def test_unexpected_end_alone() -> None:
    assert locs("role r\nresource doc {\n  actions read\n") == [("unexpected_end", 3, 15)]


def test_one_error_per_line_and_code() -> None:
    # `$` twice on one line: one report, not two
    assert codes(load("resource d {\n  actions a\n  permit any to a when $ == $\n}\n")) == [
        "unexpected_character"
    ]


def test_many_broken_rules_are_capped() -> None:
    body = "".join("  permit r to $\n" for _ in range(200))
    result = load("role r\nresource doc {\n  actions read\n" + body + "}\n")
    assert 1 < len(result.errors) <= 50
    assert {e.code for e in result.errors} == {"unexpected_character"}


# --- misspelled keywords, `=`, unclosed brackets ------------------------------------

HEAD = "role r\nresource doc {\n  actions read\n"


@pytest.mark.parametrize(
    ("line", "where", "help"),
    [
        ("  permit r to read whenn resource.a", (4, 20), "did you mean `when`?"),
        ("  permit r tox read", (4, 12), "did you mean `to`?"),
        ("  forbidd any to read", (4, 3), "did you mean `forbid`?"),
        ("  action read", (4, 3), "did you mean `actions`?"),
        ('  permit r to read when subjet.id == "a"', (4, 25), "did you mean `subject`?"),
        ("  permit r to read when nott resource.a", (4, 25), "did you mean `not`?"),
        ("  permit r to read when resource.a adn resource.b", (4, 36), "did you mean `and`?"),
    ],
)
def test_a_misspelled_keyword_is_named_with_a_suggestion(
    line: str, where: tuple[int, int], help: str
) -> None:
    (error,) = load(HEAD + line + "\n}\n").errors
    assert error.loc is not None and (error.loc.line, error.loc.column) == where
    assert error.help == help


@pytest.mark.parametrize(
    "text",
    ["rolee viewer\n", "derive role x on doc when true\nresource doc { actions a }\n"],
)
def test_a_misspelled_declaration_keyword(text: str) -> None:
    (error,) = load(text).errors
    assert error.help in ("did you mean `role`?", "did you mean `derived`?")
    assert error.loc is not None and error.loc.column == 1


def test_a_name_where_a_keyword_could_stand_is_not_called_a_typo() -> None:
    # `anyone` is close to `any`, but `any read` is no better: `to` is what is missing.
    (error,) = load("role anyone\n" + HEAD[7:] + "  permit anyone read\n}\n").errors
    assert error.help == "expected one of: `,`, `to`"


def test_a_name_that_merely_contains_a_keyword_gets_no_suggestion() -> None:
    (error,) = load(HEAD + "  permit r to read when now() < timeresource.x)\n}\n").errors
    assert error.message == "unexpected `.`" and error.help == "expected `(`"


def test_a_misspelled_resource_header_is_one_error() -> None:
    text = "resourcee doc {\n  actions read\n  permit any to read\n}\nrole r\n"
    assert [(e.loc.line if e.loc else 0, e.help) for e in load(text).errors] == [
        (1, "did you mean `resource`?")
    ]


def test_equals_in_a_derived_role_suggests_double_equals() -> None:
    text = "derived role o on doc when resource.owner = subject.id\nresource doc { actions a }\n"
    (error,) = load(text).errors
    assert (error.code, error.help) == ("unexpected_character", "to compare, write `==`")


def test_an_unclosed_parenthesis_is_one_error_where_it_opened() -> None:
    text = (
        "role r\n"  # 1
        "resource doc {\n"  # 2
        "  actions read, update\n"  # 3
        "  permit r to read when (resource.a == 1\n"  # 4
        "    or resource.b == 2\n"  # 5
        '  @id("x")\n'  # 6
        "  permit r to update\n"  # 7
        "  forbid any to update when resource.c\n"  # 8
        "  permit r to $\n"  # 9: a mistake of its own, still found
        "}\n"
    )
    assert locs(text) == [("unclosed", 4, 25), ("unexpected_character", 9, 15)]


def test_an_unclosed_bracket_in_a_derived_role() -> None:
    text = "derived role o on doc when resource.a in [1, 2\nresource doc {\n  actions a\n}\n"
    assert locs(text) == [("unclosed", 1, 42)]


def test_an_unclosed_block_is_one_error() -> None:
    text = (
        "resource doc {\n"  # 1
        "  actions read\n"  # 2
        "  permit any to read\n"  # 3
        "resource folder {\n"  # 4
        "  actions list\n"  # 5
        "  permit any to lst $\n"  # 6
        "}\n"
    )
    assert locs(text) == [("unclosed", 1, 14), ("unexpected_character", 6, 21)]


def test_a_missing_brace_skips_the_block_it_would_open() -> None:
    text = (
        "resource doc\n"  # 1
        "  actions read\n"  # 2
        '  @id("a")\n'  # 3
        "  permit any to read\n"  # 4
        "  forbid any to read when resource.x\n"  # 5
        "}\n"  # 6
        "role r\n"  # 7
        "role s $\n"  # 8: a mistake of its own, still found
    )
    assert locs(text) == [("unexpected_token", 2, 3), ("unexpected_character", 8, 8)]


def test_a_bracket_closed_on_a_later_line_is_not_called_unclosed() -> None:
    # The `)` is there; what is missing is an operator before `resource.b`.
    text = HEAD + "  permit r to read when (resource.a\n    resource.b)\n}\n"
    assert locs(text) == [("unexpected_token", 5, 5)]


def test_a_parenthesis_left_open_at_the_end_of_the_file_is_an_unexpected_end() -> None:
    assert codes(load(HEAD + "  permit r to read when (resource.a\n")) == ["unexpected_end"]
