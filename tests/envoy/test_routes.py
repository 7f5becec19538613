"""The route table: loading with every problem reported, matching, strict paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.envoy.routes import (
    NoMatch,
    RouteMatch,
    RouteTable,
    RouteTableError,
    host_labels,
    load_routes,
    parse_routes,
    split_path,
)

TABLE = """
routes:
  - name: documents.read
    methods: [GET, HEAD]
    path: /tenants/{tenant}/documents/{id}
    action: read
    resource:
      type: document
      id: "{id}"
      properties: {tenant: "{tenant}", source: envoy, weight: 3}
  - name: documents.update
    methods: [PUT, PATCH]
    path: /tenants/{tenant}/documents/{id}
    action: update
    resource: {type: document, id: "{id}", properties: {tenant: "{tenant}"}}
  - name: documents.search
    methods: [GET]
    path: /tenants/{tenant}/documents/search
    action: search
    resource: {type: collection, id: "documents", properties: {tenant: "{tenant}"}}
  - name: folder.documents
    methods: [GET]
    path: /folders/{folder}/documents/{id}
    action: read
    resource: {type: document, id: "{id}", ancestors: ["folder/{folder}"]}
  - name: files
    path: /files/{path*}
    action: read
    resource: {type: file, id: "{path}"}
  - name: tenant-host
    methods: [GET]
    host: "{tenant}.docs.example.com"
    path: /d/{id}
    action: read
    resource: {type: document, id: "{id}", properties: {tenant: "{tenant}"}}
  - name: admin-host
    methods: [GET]
    host: admin.docs.example.com
    path: /d/{id}
    action: administer
    resource: {type: document, id: "{id}"}
  - name: any-example
    methods: [GET]
    host: "*.example.com"
    path: /d/{id}
    action: peek
    resource: {type: document, id: "{id}"}
  - name: health
    path: /healthz
    action: read
    resource: {type: health, id: "service"}
    authentication: optional
  - name: root
    methods: [GET]
    path: /
    action: read
    resource: {type: page, id: "home"}
"""


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return parse_routes(TABLE, "routes.yaml")


def match(table: RouteTable, method: str, path: str, host: str = "docs.example.com") -> RouteMatch:
    m = table.match(method, host, path)
    assert isinstance(m, RouteMatch), m
    return m


def test_named_segments_fill_the_resource(table: RouteTable) -> None:
    m = match(table, "GET", "/tenants/acme/documents/42")
    assert m.route.name == "documents.read" and m.route.action == "read"
    assert (m.resource.type, m.resource.id) == ("document", "42")
    assert dict(m.resource.properties) == {"tenant": "acme", "source": "envoy", "weight": 3}
    assert dict(m.params) == {"tenant": "acme", "id": "42"}


def test_the_method_picks_the_action(table: RouteTable) -> None:
    assert match(table, "PATCH", "/tenants/acme/documents/42").route.action == "update"
    assert match(table, "head", "/tenants/acme/documents/42").route.action == "read"


def test_a_literal_segment_beats_a_named_one(table: RouteTable) -> None:
    assert match(table, "GET", "/tenants/acme/documents/search").route.name == "documents.search"


def test_a_method_the_most_specific_path_lacks_is_no_route_not_a_fallback(
    table: RouteTable,
) -> None:
    # `documents.update` would take PUT on `{id}`, but the literal path is more specific.
    assert table.match("PUT", "docs.example.com", "/tenants/acme/documents/search") == NoMatch(
        "no_route", "no route for PUT on this path"
    )


def test_a_catch_all_never_decides_what_a_specific_route_refuses() -> None:
    t = parse_routes(
        """
routes:
  - {name: admin, methods: [GET], path: "/admin/{p*}", action: administer,
     resource: {type: admin, id: "{p}"}}
  - {name: docs, methods: [GET], path: "/documents/{id}", action: read,
     resource: {type: document, id: "{id}"}}
  - {name: pages, path: "/{page*}", action: view, resource: {type: page, id: "{page}"},
     authentication: optional}
""",
        "routes.yaml",
    )
    assert isinstance(t.match("DELETE", "h", "/admin/users/1"), NoMatch)
    # Case and a trailing slash do not make a different path (most routers agree).
    for path in ("/documents/1/", "/Documents/1", "/DOCUMENTS/1/"):
        m = t.match("GET", "h", path)
        assert isinstance(m, RouteMatch) and m.route.name == "docs", path
        assert m.resource.id == "1"
    m = t.match("GET", "h", "/about/Team")
    assert isinstance(m, RouteMatch) and m.route.name == "pages"
    assert m.resource.id == "about/Team"  # captured values keep their case


def test_a_route_path_with_a_trailing_slash_is_the_same_path() -> None:
    t = parse_routes(
        'routes: [{path: "/docs/", action: list, resource: {type: docs, id: all}}]', "r.yaml"
    )
    for path in ("/docs", "/docs/"):
        assert isinstance(t.match("GET", "h", path), RouteMatch), path


def test_ancestors_and_the_rest_of_a_path(table: RouteTable) -> None:
    m = match(table, "GET", "/folders/7/documents/42")
    assert m.resource.ancestors == ("folder/7",)
    assert match(table, "DELETE", "/files/a/b/c.txt").resource.id == "a/b/c.txt"
    assert table.match("GET", "h", "/files") == NoMatch("no_route")


def test_segments_are_percent_decoded(table: RouteTable) -> None:
    m = match(table, "GET", "/tenants/acme%20corp/documents/r%C3%A9sum%C3%A9")
    assert dict(m.params) == {"tenant": "acme corp", "id": "résumé"}


def test_hosts_most_specific_first(table: RouteTable) -> None:
    assert match(table, "GET", "/d/1", "admin.docs.example.com").route.name == "admin-host"
    m = match(table, "GET", "/d/1", "Acme.Docs.Example.com:8443")
    assert m.route.name == "tenant-host" and m.resource.properties["tenant"] == "acme"
    assert match(table, "GET", "/d/1", "www.example.com").route.name == "any-example"
    assert table.match("GET", "example.com", "/d/1") == NoMatch("no_route")
    assert table.match("GET", "docs.example.org", "/d/1") == NoMatch("no_route")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/tenants/acme/documents/42"),  # no route for the method
        ("GET", "/tenants/acme/documents"),
        ("GET", "/tenants/acme/documents/42/extra"),
        ("GET", "/nothing"),
        ("POST", "/"),
    ],
)
def test_unmatched_requests(table: RouteTable, method: str, path: str) -> None:
    result = table.match(method, "docs.example.com", path)
    assert isinstance(result, NoMatch) and result.cause == "no_route", result


@pytest.mark.parametrize(
    "path",
    [
        "/tenants/acme/documents/..%2Fsecret",
        "/tenants/acme/documents/a%2fb",
        "/tenants/acme/documents/a%5Cb",
        "/tenants/acme/documents/a\\b",
        "/tenants/acme/%2e%2e/documents/42",
        "/tenants/./documents/42",
        "/tenants//documents/42",
        "/tenants/acme/documents/%00",
        "/tenants/acme/documents/%ff",
        "relative/path",
        "/" + "a/" * 70,
        "/" + "a" * 9000,
    ],
)
def test_ambiguous_paths_are_refused_not_guessed(table: RouteTable, path: str) -> None:
    result = table.match("GET", "docs.example.com", path)
    assert isinstance(result, NoMatch) and result.cause == "bad_path", result


def test_root_and_optional_authentication(table: RouteTable) -> None:
    assert match(table, "GET", "/").route.name == "root"
    assert split_path("/") == [""]
    assert match(table, "GET", "/healthz").route.anonymous_ok
    assert not match(table, "GET", "/").route.anonymous_ok


def test_host_labels() -> None:
    assert host_labels("Docs.Example.COM.:443") == ["docs", "example", "com"]
    assert host_labels("[::1]:8080") == ["::1"]
    assert host_labels("") == []


def test_default_route_names() -> None:
    t = parse_routes(
        "routes:\n  - {methods: [get, post], path: /a, action: x, resource: {type: t, id: i}}\n"
        "  - {host: h.example.com, path: /a, action: x, resource: {type: t, id: i}}\n"
    )
    assert [r.name for r in t.routes] == ["GET,POST /a", "* h.example.com/a"]


def test_every_problem_is_reported_at_once() -> None:
    text = """
routes:
  - name: one
    method: GET
    path: documents/{id}
    resource: {type: document, id: "{docid}"}
  - name: one
    path: /a/{x}/{x}
    action: read
    resource: {type: "", id: "{x}", propertys: {}}
  - path: /a/{rest*}/b
    action: read
    resource: {type: t, id: "x-{rest}", ancestors: ["{rest}"]}
  - path: /a/b{c}
    host: "bad host!"
    action: read
    authentication: sometimes
    resource: {type: t, id: i}
  - not a mapping
"""
    with pytest.raises(RouteTableError) as err:
        parse_routes(text, "routes.yaml")
    msg = str(err.value)
    for expected in [
        "routes.yaml: routes[0].method: unknown key; did you mean `methods`?",
        "routes[0].path: required, a path starting with `/`",
        "routes[0].action: required",
        "routes[0].resource.id: `{docid}` is not captured",
        "routes[1].path: a name is captured twice",
        "routes[1].resource.type: required",
        "routes[1].resource.propertys: unknown key; did you mean `properties`?",
        "routes[2].path: `{rest*}` may only be the last segment",
        "routes[2].resource.ancestors[0]: must read `type/{id}`",
        "routes[3].path: `b{c}`: a segment is literal text or one `{name}`",
        "routes[3].host: `bad host!`",
        "routes[3].authentication: must be `required` or `optional`",
        "routes[4]: must be a mapping",
    ]:
        assert expected in msg, f"{expected!r} not in:\n{msg}"


def test_routes_that_match_the_same_requests_are_refused() -> None:
    text = """
routes:
  - {name: a, methods: [GET], path: "/d/{id}", action: read, resource: {type: d, id: "{id}"}}
  - {name: b, methods: [GET, PUT], path: "/d/{doc}", action: x, resource: {type: d, id: "{doc}"}}
  - {name: c, methods: [DELETE], path: "/d/{id}", action: y, resource: {type: d, id: "{id}"}}
  - {name: d, path: "/d/{id}", host: "{t}.x.com", action: z, resource: {type: d, id: "{id}"}}
  - {name: e, path: "/d/{id}", host: "{u}.x.com", action: z, resource: {type: d, id: "{id}"}}
"""
    with pytest.raises(RouteTableError) as err:
        parse_routes(text)
    assert err.value.problems == (
        "routes[1] (`b`) matches the same requests as routes[0] (`a`)",
        "routes[4] (`e`) matches the same requests as routes[3] (`d`)",
    )


@pytest.mark.parametrize(
    "text", ["", "routes: 3", "- a\n- b", "routes: [\n", "routes: []\nextra: 1"]
)
def test_not_a_route_table(text: str) -> None:
    with pytest.raises(RouteTableError):
        parse_routes(text)


def test_a_key_listed_twice_is_refused() -> None:
    # PyYAML keeps the last: the route would answer DELETE as well, unseen.
    text = (
        "routes:\n"
        '  - {name: a, methods: [GET], path: "/d/{id}", action: read,\n'
        '     resource: {type: d, id: "{id}"}, methods: [GET, DELETE]}\n'
    )
    with pytest.raises(RouteTableError) as err:
        parse_routes(text)
    (problem,) = err.value.problems
    assert problem.startswith("line 3, column 39: key `methods` is listed twice in one mapping")


def test_loading_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(TABLE)
    assert len(load_routes(path)) == 10
    with pytest.raises(RouteTableError, match="cannot read"):
        load_routes(tmp_path / "missing.yaml")


def test_matching_cost_does_not_grow_with_the_table() -> None:
    """Thousands of routes: matching still walks only the request's own path."""
    lines = ["routes:"]
    for i in range(2000):
        lines.append(
            f"  - {{path: '/svc{i}/items/{{id}}', action: read, "
            f"resource: {{type: t{i}, id: '{{id}}'}}}}"
        )
    t = parse_routes("\n".join(lines))
    m = t.match("GET", "h", "/svc1999/items/7")
    assert isinstance(m, RouteMatch) and m.resource.type == "t1999"
