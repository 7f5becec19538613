"""The route table: which HTTP requests are which (resource, action) questions.

A YAML file, checked as a whole (every problem reported at once) and compiled once
into a segment trie; matching a request walks the trie, so its cost depends on the
path's length, not on the number of routes::

    routes:
      - name: documents.read              # optional; names the route in the audit log
        methods: [GET, HEAD]              # optional; default: any method
        host: "{tenant}.docs.example.com" # optional; exact, `*.example.com`, or `{name}`
                                          #   labels; default: any host
        path: /api/documents/{id}         # `{name}`: one segment; a last `{name*}`:
                                          #   the rest of the path (one or more segments)
        action: read
        resource:
          type: document
          id: "{id}"                      # a template over the captured names
          properties: {tenant: "{tenant}"}  # optional; string values are templates
          ancestors: ["folder/{folder}"]    # optional; `type/id` templates
        authentication: required          # or `optional`: no credential → anonymous

**Which route wins.** The most specific path: at each segment a literal beats
`{name}`, which beats `{name*}`. Among routes with the same path, the first whose
method and host fit, most specific host first (exact, then with `{name}` labels,
then the longest `*.` suffix, then any). If the most specific path has no route for
the request's method and host, the next most specific path is tried. No route: the
request is denied (default deny). Two routes that would match exactly the same
requests are a load error, so the order of routes in the file never matters.

**Paths are matched strictly.** The query string is not part of the match. Each
segment is percent-decoded before matching (`%20` matches a space), but a path with
an encoded `/` or `\\` (`%2F`, `%5C`), a `.` or `..` segment, an empty segment
(`//`), a control character or invalid UTF-8 is refused as `bad_path` rather than
guessed at: a proxy and an upstream that normalise such paths differently are how
authorization gets bypassed. A trailing `/` is a segment of its own: `/docs/` does
not match `/docs/{id}`. (Envoy's `normalize_path`, `merge_slashes` and
`path_with_escaped_slashes_action: REJECT_REQUEST` make these rare.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from pdp.engine.request import Resource
from pdp.lang.errors import did_you_mean
from pdp.store.document import DocumentError, load_yaml

MAX_PATH_LENGTH = 8192
MAX_SEGMENTS = 64
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = re.compile(r"\{(" + _NAME + r")\}")
_PARAM = re.compile(r"^\{(" + _NAME + r")\}$")
_REST = re.compile(r"^\{(" + _NAME + r")\*\}$")
_METHOD = re.compile(r"^[A-Z]+$")
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
_ROUTE_KEYS = ("name", "methods", "host", "path", "action", "resource", "authentication")
_RESOURCE_KEYS = ("type", "id", "properties", "ancestors")


class RouteTableError(ValueError):
    """A route table that cannot be used; `problems` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


# --- templates -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """Text with `{name}` placeholders, e.g. `doc-{id}`; parsed once."""

    text: str
    parts: tuple[str, ...]  # literal, name, literal, name, ..., literal

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, str]) -> str:
        out = list(self.parts)
        for i in range(1, len(out), 2):
            out[i] = values[out[i]]
        return "".join(out)


def parse_template(text: str) -> Template:
    """`doc-{id}` → Template; ValueError for a stray brace."""
    parts = tuple(_PLACEHOLDER.split(text))
    for literal in parts[0::2]:
        if "{" in literal or "}" in literal:
            raise ValueError(f"`{text}`: braces only around a name, as in `{{id}}`")
    return Template(text, parts)


# --- host patterns ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPattern:
    """`docs.example.com`, `*.example.com` (one or more labels), `{tenant}.example.com`."""

    text: str
    labels: tuple[str | None, ...]  # fixed part, right-aligned; None is a capture
    names: tuple[str, ...]  # capture names, in label order
    wildcard: bool

    @property
    def rank(self) -> tuple[int, int]:
        """Higher is more specific: exact > captures > wildcard (longer first)."""
        literal = sum(1 for x in self.labels if x is not None)
        if self.wildcard:
            return (1, literal)
        return (3, literal) if not self.names else (2, literal)

    @property
    def shape(self) -> str:
        """The pattern with capture names erased: equal shapes match equal hosts."""
        fixed = ".".join("{}" if x is None else x for x in self.labels)
        return f"*.{fixed}" if self.wildcard else fixed

    def match(self, host: Sequence[str]) -> dict[str, str] | None:
        n = len(self.labels)
        if len(host) < n or (not self.wildcard and len(host) != n):
            return None
        if self.wildcard and len(host) == n:
            return None  # `*.example.com` does not match `example.com` itself
        tail = host[len(host) - n :]
        captured: dict[str, str] = {}
        names = iter(self.names)
        for want, got in zip(self.labels, tail, strict=True):
            if want is None:
                captured[next(names)] = got
            elif want != got:
                return None
        return captured


def parse_host(text: str) -> HostPattern | None:
    """A host pattern, or None for "any host" (`*` or empty); ValueError when bad."""
    t = text.strip().rstrip(".")
    if t in ("", "*"):
        return None
    wildcard = t.startswith("*.")
    body = t[2:] if wildcard else t
    labels: list[str | None] = []
    names: list[str] = []
    for label in body.split("."):
        m = _PARAM.match(label)
        if m:
            labels.append(None)
            names.append(m.group(1))  # names keep their case; host labels do not
        elif _HOST_LABEL.match(label.lower()):
            labels.append(label.lower())
        else:
            raise ValueError(
                f"`{text}`: a host is DNS labels, `{{name}}` labels, and maybe a leading `*.`"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"`{text}`: a name is captured twice")
    return HostPattern(t, tuple(labels), tuple(names), wildcard)


def host_labels(host: str) -> list[str]:
    """`Docs.Example.com:8443` → ["docs", "example", "com"]; `[::1]:80` → ["::1"]."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return [h[1:end]] if end > 0 else [h]
    name, colon, port = h.rpartition(":")
    if colon and port.isdigit():
        h = name
    h = h.rstrip(".")
    return h.split(".") if h else []


# --- routes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the table, checked and parsed."""

    name: str
    methods: frozenset[str] | None  # None: any method
    host: HostPattern | None  # None: any host
    path: str
    shape: tuple[str, ...]  # per segment: the literal, "{}" for a name, "{*}" for the rest
    path_names: tuple[str, ...]  # the names captured by the path, in order
    action: str
    resource_type: str
    resource_id: Template
    properties: Mapping[str, Any]  # values: Template, or a literal YAML value
    ancestors: tuple[Template, ...]
    anonymous_ok: bool
    index: int  # position in the file, for messages and ties

    def resource(self, params: Mapping[str, str]) -> Resource | None:
        """The resource this route names for captured `params`; None if its id is empty."""
        rid = self.resource_id.render(params)
        if not rid:
            return None
        props = {
            k: v.render(params) if isinstance(v, Template) else v
            for k, v in self.properties.items()
        }
        ancestors: list[str] = []
        for t in self.ancestors:
            a = t.render(params)
            kind, slash, aid = a.partition("/")
            if not (kind and slash and aid):
                return None
            ancestors.append(a)
        return Resource(self.resource_type, rid, MappingProxyType(props), tuple(ancestors))


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request's route, the values captured from its path and host, and its resource."""

    route: Route
    params: Mapping[str, str]
    resource: Resource


@dataclass(frozen=True, slots=True)
class NoMatch:
    """No route: `no_route`, or `bad_path` for a path refused before matching."""

    cause: str
    detail: str = ""


@dataclass
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    here: list[Route] = field(default_factory=list)  # routes whose path ends here
    rest: list[Route] = field(default_factory=list)  # routes with `{x*}` from here


class RouteTable:
    """Compiled routes; immutable after construction and safe to share between threads."""

    def __init__(self, routes: Sequence[Route], source: str = "<routes>") -> None:
        self.routes = tuple(routes)
        self.source = source
        self._root = _Node()
        problems: list[str] = []
        for r in self.routes:
            node = self._root
            for seg in r.shape:
                if seg == "{*}":
                    break
                if seg == "{}":
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literal.setdefault(seg.lower(), _Node())
            bucket = node.rest if r.shape and r.shape[-1] == "{*}" else node.here
            for other in bucket:
                if _overlap(r, other):
                    problems.append(
                        f"routes[{r.index}] (`{r.name}`) matches the same requests as "
                        f"routes[{other.index}] (`{other.name}`)"
                    )
            bucket.append(r)
        if problems:
            raise RouteTableError(source, problems)
        # Most specific host first; among equals, the order of the file.
        for node in _nodes(self._root):
            node.here.sort(key=_host_order)
            node.rest.sort(key=_host_order)

    def match(self, method: str, host: str, path: str) -> RouteMatch | NoMatch:
        """The route for a request (`path` without the query string), or why none."""
        segments = split_path(path)
        if isinstance(segments, str):
            return NoMatch("bad_path", segments)
        if len(segments) > 1 and segments[-1] == "":
            # `/docs/42/` is `/docs/42`, as most upstream routers take it: were it a
            # different path here, a catch-all route would decide it instead.
            segments.pop()
        labels = host_labels(host)
        found = _walk(self._root, segments, 0, [], method.upper(), labels)
        if isinstance(found, RouteMatch):
            return found
        if found is _NOT_THIS_METHOD:
            return NoMatch("no_route", f"no route for {method.upper()} on this path")
        return NoMatch("no_route")

    def __len__(self) -> int:
        return len(self.routes)


def _nodes(root: _Node) -> list[_Node]:
    out, todo = [], [root]
    while todo:
        n = todo.pop()
        out.append(n)
        todo.extend(n.literal.values())
        if n.param is not None:
            todo.append(n.param)
    return out


def _host_order(r: Route) -> tuple[int, int, int]:
    rank = r.host.rank if r.host is not None else (0, 0)
    return (-rank[0], -rank[1], r.index)


def _overlap(a: Route, b: Route) -> bool:
    """Whether two routes with the same path shape match the same requests."""
    same_host = (a.host.shape if a.host else "*") == (b.host.shape if b.host else "*")
    if not same_host:
        return False
    return a.methods is None or b.methods is None or bool(a.methods & b.methods)


class _MethodNotRouted:
    """The most specific path fits the request, but none of its routes takes the method."""


_NOT_THIS_METHOD = _MethodNotRouted()


def _walk(
    node: _Node,
    segs: Sequence[str],
    i: int,
    values: list[str],
    method: str,
    host: Sequence[str],
) -> RouteMatch | _MethodNotRouted | None:
    """Depth-first, literal before `{name}` before `{name*}`; each trie node is visited
    at most once per request (a node sits at one depth), so this is linear.

    The search stops at the most specific path whose routes fit the host: if none of
    them takes the method, the answer is no route, not a less specific path. Falling
    back would judge `DELETE /admin/x` by whatever catch-all also matches it.
    """
    if i == len(segs):
        hit = _pick(node.here, values, method, host)
        if hit is not None:
            return hit
    else:
        seg = segs[i]
        child = node.literal.get(seg.lower())
        if child is not None:
            hit = _walk(child, segs, i + 1, values, method, host)
            if hit is not None:
                return hit
        if node.param is not None and seg:
            values.append(seg)
            hit = _walk(node.param, segs, i + 1, values, method, host)
            values.pop()
            if hit is not None:
                return hit
        if node.rest:
            return _pick(node.rest, [*values, "/".join(segs[i:])], method, host)
    return None


def _pick(
    routes: Sequence[Route], values: Sequence[str], method: str, host: Sequence[str]
) -> RouteMatch | _MethodNotRouted | None:
    """The first route that takes the request; `_NOT_THIS_METHOD` if some fit all but
    the method."""
    other_method = False
    for r in routes:
        params = dict(zip(r.path_names, values, strict=True))
        if r.host is not None:
            from_host = r.host.match(host)
            if from_host is None:
                continue
            params.update(from_host)
        if r.methods is not None and method not in r.methods:
            other_method = True
            continue
        resource = r.resource(params)
        if resource is not None:
            return RouteMatch(r, MappingProxyType(params), resource)
    return _NOT_THIS_METHOD if other_method else None


def split_path(path: str) -> list[str] | str:
    """A request path → decoded segments, or why it is refused (`bad_path`).

    `/a/b%20c` → ["a", "b c"]; `/` → [""]; `/a/` → ["a", ""].
    """
    if not path.startswith("/"):
        return "path does not start with `/`"
    if len(path) > MAX_PATH_LENGTH:
        return f"path longer than {MAX_PATH_LENGTH} characters"
    if "\\" in path or _ENCODED_SEPARATOR.search(path):
        return "path contains an encoded `/` or a `\\`"
    raw = path[1:].split("/")
    if len(raw) > MAX_SEGMENTS:
        return f"path has more than {MAX_SEGMENTS} segments"
    out: list[str] = []
    for i, seg in enumerate(raw):
        if seg == "" and i != len(raw) - 1:
            return "path has an empty segment (`//`)"
        try:
            text = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            return "path is not UTF-8 once decoded"
        if text in (".", ".."):
            return "path has a `.` or `..` segment"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return "path has a control character"
        out.append(text)
    return out


# --- loading ---------------------------------------------------------------------------


def load_routes(path: str | Path) -> RouteTable:
    """Read and compile a route table file; RouteTableError lists every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RouteTableError(str(p), [f"cannot read: {exc}"]) from None
    return parse_routes(text, str(p))


def parse_routes(text: str, source: str = "<routes>") -> RouteTable:
    """Route table YAML text → compiled `RouteTable`; RouteTableError lists every problem."""
    try:
        # Keys listed twice are an error: a second `methods:` would widen a route unseen.
        doc = load_yaml(text, source)
    except DocumentError as exc:
        raise RouteTableError(source, exc.problems) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
        raise RouteTableError(source, ["expected a mapping with a `routes` list"])
    problems: list[str] = []
    for key in doc:
        if key != "routes":
            problems.append(_unknown(str(key), ("routes",), ""))
    routes: list[Route] = []
    names: dict[str, int] = {}
    for i, item in enumerate(doc["routes"]):
        route = _route(item, i, problems)
        if route is None:
            continue
        if route.name in names:
            problems.append(
                f"routes[{i}].name: `{route.name}` is also the name of routes[{names[route.name]}]"
            )
        names.setdefault(route.name, i)
        routes.append(route)
    if problems:
        raise RouteTableError(source, problems)
    return RouteTable(routes, source)


def _unknown(key: str, known: Sequence[str], where: str) -> str:
    hint = did_you_mean(key, known)
    return f"{where}{key}: unknown key" + (f"; {hint}" if hint else "")


def _route(item: object, i: int, problems: list[str]) -> Route | None:
    at = f"routes[{i}]"
    if not isinstance(item, dict):
        problems.append(f"{at}: must be a mapping")
        return None
    before = len(problems)
    for key in item:
        if key not in _ROUTE_KEYS:
            problems.append(_unknown(str(key), _ROUTE_KEYS, f"{at}."))

    methods: frozenset[str] | None = None
    raw_methods = item.get("methods")
    if raw_methods is not None:
        ms = [raw_methods] if isinstance(raw_methods, str) else raw_methods
        if not isinstance(ms, list) or not ms or not all(isinstance(m, str) for m in ms):
            problems.append(f"{at}.methods: must be a list of HTTP methods, e.g. [GET, HEAD]")
        else:
            upper = [m.upper() for m in ms]
            if "*" not in upper:
                bad = [m for m in upper if not _METHOD.match(m)]
                if bad:
                    problems.append(f"{at}.methods: `{bad[0]}` is not an HTTP method")
                methods = frozenset(upper)

    host: HostPattern | None = None
    raw_host = item.get("host")
    if raw_host is not None:
        if not isinstance(raw_host, str):
            problems.append(f"{at}.host: must be a string")
        else:
            try:
                host = parse_host(raw_host)
            except ValueError as exc:
                problems.append(f"{at}.host: {exc}")

    path = item.get("path")
    shape: list[str] = []
    path_names: list[str] = []
    if not isinstance(path, str) or not path.startswith("/"):
        problems.append(f"{at}.path: required, a path starting with `/`")
        path = ""
    else:
        segs = path[1:].split("/")
        for j, seg in enumerate(segs):
            last = j == len(segs) - 1
            param, rest = _PARAM.match(seg), _REST.match(seg)
            if param:
                shape.append("{}")
                path_names.append(param.group(1))
            elif rest:
                if not last:
                    problems.append(f"{at}.path: `{seg}` may only be the last segment")
                shape.append("{*}")
                path_names.append(rest.group(1))
            elif "{" in seg or "}" in seg:
                problems.append(
                    f"{at}.path: `{seg}`: a segment is literal text or one `{{name}}`, not both"
                )
            elif seg == "" and last and j > 0:
                pass  # `/docs/` is `/docs`, as requests are matched
            elif seg == "" and not last:
                problems.append(f"{at}.path: empty segment (`//`)")
            elif seg in (".", ".."):
                problems.append(f"{at}.path: `{seg}` segment")
            else:
                shape.append(seg)
        if len(set(path_names)) != len(path_names):
            problems.append(f"{at}.path: a name is captured twice")
    names = set(path_names) | set(host.names if host else ())
    if host and set(host.names) & set(path_names):
        problems.append(f"{at}: a name is captured by both the host and the path")

    action = item.get("action")
    if not isinstance(action, str) or not action:
        problems.append(f"{at}.action: required, the action name")
        action = ""

    auth = item.get("authentication", "required")
    if auth not in ("required", "optional"):
        problems.append(f"{at}.authentication: must be `required` or `optional`")

    res = item.get("resource")
    rtype, rid = "", Template("", ("",))
    props: dict[str, Any] = {}
    ancestors: tuple[Template, ...] = ()
    if not isinstance(res, dict):
        problems.append(f"{at}.resource: required, a mapping with `type` and `id`")
    else:
        rtype, rid, props, ancestors = _resource(res, f"{at}.resource", names, problems)

    if len(problems) > before:
        return None
    label = item.get("name")
    if label is not None and (not isinstance(label, str) or not label):
        problems.append(f"{at}.name: must be a non-empty string")
        return None
    verbs = ",".join(sorted(methods)) if methods else "*"
    default_name = f"{verbs} {raw_host}{path}" if raw_host else f"{verbs} {path}"
    return Route(
        name=label or default_name,
        methods=methods,
        host=host,
        path=path,
        shape=tuple(shape),
        path_names=tuple(path_names),
        action=action,
        resource_type=rtype,
        resource_id=rid,
        properties=MappingProxyType(props),
        ancestors=ancestors,
        anonymous_ok=auth == "optional",
        index=i,
    )


def _resource(
    res: Mapping[str, Any], at: str, names: set[str], problems: list[str]
) -> tuple[str, Template, dict[str, Any], tuple[Template, ...]]:
    for key in res:
        if key not in _RESOURCE_KEYS:
            problems.append(_unknown(str(key), _RESOURCE_KEYS, f"{at}."))

    def template(text: object, where: str) -> Template | None:
        if not isinstance(text, str):
            problems.append(f"{where}: must be a string")
            return None
        try:
            t = parse_template(text)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return None
        for n in t.names:
            if n not in names:
                hint = did_you_mean(n, names)
                problems.append(
                    f"{where}: `{{{n}}}` is not captured by this route's path or host"
                    + (f"; {hint}" if hint else "")
                )
                return None
        return t

    rtype = res.get("type")
    if not isinstance(rtype, str) or not rtype:
        problems.append(f"{at}.type: required, the resource type")
        rtype = ""
    rid = template(res.get("id"), f"{at}.id") or Template("", ("",))
    if rid.text == "":
        problems.append(f"{at}.id: required, e.g. `{{id}}` or a fixed id")
    props: dict[str, Any] = {}
    raw_props = res.get("properties", {})
    if not isinstance(raw_props, dict):
        problems.append(f"{at}.properties: must be a mapping")
    else:
        for k, v in raw_props.items():
            if isinstance(v, str):
                t = template(v, f"{at}.properties.{k}")
                if t is not None:
                    props[str(k)] = t if t.names else v
            else:
                props[str(k)] = v
    ancestors: list[Template] = []
    raw_anc = res.get("ancestors", [])
    if not isinstance(raw_anc, list):
        problems.append(f"{at}.ancestors: must be a list of `type/id` templates")
    else:
        for j, a in enumerate(raw_anc):
            t = template(a, f"{at}.ancestors[{j}]")
            if t is None:
                continue
            head = t.parts[0]
            if "/" not in head or head.startswith("/"):
                problems.append(
                    f"{at}.ancestors[{j}]: must read `type/{{id}}`, e.g. `folder/{{f}}`"
                )
                continue
            ancestors.append(t)
    return rtype, rid, props, tuple(ancestors)
