"""The bindings document: the YAML form that `pdp check --bindings` reads and the store
imports and exports.

    subjects:
      - id: user:alice
        attributes: {tenant: acme, department: eng}
    groups:
      - id: group:editors
        members: [user:alice, group:leads]
    bindings:
      - subject: group:editors
        role: editor
        scope: tenant/acme          # global (default), tenant/<t> or <type>/<id>
        expires: 2027-01-01T00:00:00Z   # optional
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from pdp.engine.bindings import (
    Bindings,
    RoleBinding,
    check_scope,
    group_cycle,
    parse_subject_ref,
)
from pdp.lang.errors import did_you_mean
from pdp.lang.times import to_time
from pdp.store.validate import MAX_ROLE_BYTES, RoleCatalog, check_length, non_finite, time_range

SECTIONS = ("subjects", "groups", "bindings")


class DocumentError(ValueError):
    """Every problem found in a bindings document, each naming where it is."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class DuplicateKeyError(DocumentError):
    """A mapping lists a key twice: the problems name each repeat, with its line."""


# libyaml, when PyYAML was built with it, reads large documents ~10x faster. Its
# constructor is PyYAML's own Python one, so the duplicate check below applies to both.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(_BaseLoader):  # type: ignore[misc]
    """PyYAML's safe loader, noting every key a mapping lists twice.

    YAML forbids duplicate keys, but PyYAML keeps the last one silently: a second
    `bindings:` section, or `{role: viewer, role: admin}`, would lose data unseen.
    `duplicates` collects one problem per repeated key, with its place.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, int, str]] = []  # (line, column, problem)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
                if first is not key_node:
                    mark, was = key_node.start_mark, first.start_mark
                    self.duplicates.append(
                        (
                            mark.line,
                            mark.column,
                            f"line {mark.line + 1}, column {mark.column + 1}: key `{key}` is "
                            f"listed twice in one mapping (first at line {was.line + 1}, column "
                            f"{was.column + 1}); only the last would be read",
                        )
                    )
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


class _DuplicateJsonKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateJsonKey(k)
            seen.add(k)
    return out


def load_yaml(text: str, source: str) -> Any:
    """YAML text → data, refusing duplicate keys; `DocumentError` naming every problem."""
    loader = UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DocumentError(
            source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise DuplicateKeyError(source, [p for _, _, p in sorted(loader.duplicates)])
    return data


def load_document(text: str, source: str) -> Any:
    """A bindings document's text (YAML, or JSON: read 50x faster) → data.

    Every file the store reads goes through here: a key listed twice in one mapping
    is an error naming the line, never a value silently dropped.
    """
    if not text.lstrip().startswith("{"):
        return load_yaml(text, source)
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as exc:
        # Not JSON, but perhaps YAML in flow style (`{bindings: [...]}`).
        try:
            return load_yaml(text, source)
        except DuplicateKeyError:
            raise
        except DocumentError:
            pass
        raise DocumentError(
            source, [f"line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"]
        ) from None
    except _DuplicateJsonKey as exc:
        # JSON is YAML: the YAML reader finds every repeated key with its line.
        try:
            load_yaml(text, source)
        except DuplicateKeyError:
            raise
        except DocumentError:
            pass
        raise DocumentError(
            source, [f"key `{exc.key}` is listed twice in one object; only the last would be read"]
        ) from None


def read_document(path: str | Path) -> Any:
    """Read a bindings file (UTF-8 YAML or JSON) → data; `DocumentError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise DocumentError(str(path), [f"bindings files must be UTF-8 ({exc.reason})"]) from None
    return load_document(text, str(path))


def load_bindings_file(
    path: str | Path, known_roles: Collection[str] | RoleCatalog | None = None
) -> Bindings:
    """Read a bindings YAML file; `known_roles`, when given, rejects undeclared roles."""
    return parse_bindings(read_document(path), str(path), known_roles)


BINDING_KEYS = ("subject", "role", "scope", "expires", "created_by")


@dataclass(frozen=True)
class Places:
    """Where a document's entries are, to name them in problems found later (a cycle
    through the store): looked up when asked, so a big import pays nothing for it."""

    data: Mapping[str, Any] = field(default_factory=dict)

    def membership(self, group: str, member: str) -> str | None:
        """`groups[i].members[j]` listing `member` in `group`, or None."""
        items = self.data.get("groups")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, Mapping) or _key_of(item.get("id")) != group:
                continue
            members = item.get("members")
            for j, m in enumerate(members if isinstance(members, list) else []):
                if m == member or _key_of(m) == member:
                    return f"groups[{i}].members[{j}]"
        return None


def _key_of(value: object) -> str | None:
    try:
        t, i = parse_subject_ref(value)  # type: ignore[arg-type]
    except ValueError:
        return None
    return f"{t}:{i}"


def parse_bindings(
    data: object,
    source: str = "<bindings>",
    known_roles: Collection[str] | RoleCatalog | None = None,
) -> Bindings:
    """A parsed YAML document → `Bindings`, or `DocumentError` listing every problem.

    `known_roles`: the roles a binding may name; a `RoleCatalog` also tells a derived
    role (which no binding can grant) from an undeclared one.
    """
    return parse_document(data, source, known_roles)[0]


def parse_document(
    data: object,
    source: str = "<bindings>",
    known_roles: Collection[str] | RoleCatalog | None = None,
    *,
    for_import: bool = False,
) -> tuple[Bindings, Places]:
    """`parse_bindings`, and `Places` to name the document's entries in later problems.

    `for_import`: also refuse a binding listed twice with different expiries. The
    engine reads such a file fine (either grants while it holds), but the store keeps
    one row per (subject, scope, role), and which expiry to keep would be a guess.
    """
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise DocumentError(source, ["the document must be a mapping with " + ", ".join(SECTIONS)])
    for key in data:
        if key not in SECTIONS:
            hint = did_you_mean(str(key), SECTIONS)
            problems.append(f"unknown section `{key}`" + (f"; {hint}" if hint else ""))

    subjects: dict[str, Mapping[str, Any]] = {}
    for i, item in enumerate(_list(data, "subjects", problems)):
        where = f"subjects[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be a mapping with `id` and `attributes`")
            continue
        _unknown_keys(item, ("id", "attributes"), where, problems)
        key = _subject(item.get("id"), f"{where}.id", problems)
        attrs = item.get("attributes") or {}
        if not isinstance(attrs, Mapping):
            problems.append(f"{where}.attributes: must be a mapping")
            continue
        bad = non_finite(attrs, f"{where}.attributes")
        if bad is not None:
            problems.append(f"{bad}: NaN and infinite numbers are not values")
            continue
        if key:
            if key in subjects:
                problems.append(f"{where}.id: subject `{key}` is listed twice")
            subjects[key] = {str(k): plain_value(v) for k, v in attrs.items()}

    groups: dict[str, frozenset[str]] = {}
    for i, item in enumerate(_list(data, "groups", problems)):
        where = f"groups[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be a mapping with `id` and `members`")
            continue
        _unknown_keys(item, ("id", "members"), where, problems)
        key = _subject(item.get("id"), f"{where}.id", problems)
        if key and not key.startswith("group:"):
            problems.append(f"{where}.id: `{key}` is not a group; group ids are `group:<name>`")
            continue
        members = item.get("members") or []
        if not isinstance(members, list):
            problems.append(f"{where}.members: must be a list of `type:id`")
            continue
        refs = {m for j, m in enumerate(members) if _subject(m, f"{where}.members[{j}]", problems)}
        if key:
            groups[key] = groups.get(key, frozenset()) | frozenset(refs)
    cycle = group_cycle(groups)
    if cycle:
        places = Places(data)
        links = [places.membership(g, m) for g, m in zip(cycle, cycle[1:], strict=False)]
        named = ", ".join(p for p in links if p)
        problems.append(
            "groups contain each other in a cycle: "
            + " → ".join(f"`{g}`" for g in cycle)
            + (f" ({named})" if named else "")
        )

    bindings: list[RoleBinding] = []
    first: dict[tuple[str, str, str], tuple[int, int]] = {}  # → (entry, index in bindings)
    for i, item in enumerate(_list(data, "bindings", problems)):
        where = f"bindings[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be a mapping with `subject`, `role` and `scope`")
            continue
        _unknown_keys(item, BINDING_KEYS, where, problems)
        key = _subject(item.get("subject"), f"{where}.subject", problems)
        role = item.get("role")
        if not isinstance(role, str) or not role:
            problems.append(
                f"{where}.role: is required"
                if role is None
                else f"{where}.role: must be a role name"
            )
            continue
        too_long = check_length(role, "role name", MAX_ROLE_BYTES)
        if too_long:
            problems.append(f"{where}.role: {too_long}")
        elif isinstance(known_roles, RoleCatalog):
            # The same words as `pdp bindings grant`: a derived role is named as one.
            problems += (f"{where}.role: {p}" for p in known_roles.check_all([role]))
        elif known_roles is not None and role not in known_roles:
            hint = did_you_mean(role, known_roles)
            problems.append(
                f"{where}.role: role `{role}` is not declared by the policies"
                + (f"; {hint}" if hint else "")
            )
        scope = item.get("scope", "global")
        try:
            check_scope(scope)
        except ValueError as exc:
            problems.append(f"{where}.scope: {exc}")
            continue
        too_long = check_length(scope, "scope")
        if too_long:
            problems.append(f"{where}.scope: {too_long}")
            continue
        expires = _time(item.get("expires"), f"{where}.expires", problems)
        if key:
            if for_import:
                j, n = first.setdefault((key, scope, role), (i, len(bindings)))
                if j != i and bindings[n].expires != expires:
                    problems.append(
                        f"{where}: `{role}` in `{scope}` for `{key}` is listed twice with "
                        f"different expiries (also bindings[{j}]); the store keeps one"
                    )
            bindings.append(
                RoleBinding(key, role, scope, expires, _opt_str(item.get("created_by")))
            )
    if problems:
        raise DocumentError(source, problems)
    return Bindings(subjects=subjects, groups=groups, bindings=tuple(bindings)), Places(data)


def dump_bindings(b: Bindings) -> dict[str, Any]:
    """`Bindings` → the YAML document (the inverse of `parse_bindings`)."""
    out: dict[str, Any] = {}
    if b.subjects:
        out["subjects"] = [{"id": k, "attributes": dict(v)} for k, v in sorted(b.subjects.items())]
    if b.groups:
        out["groups"] = [{"id": k, "members": sorted(v)} for k, v in sorted(b.groups.items())]
    if b.bindings:
        rows = []
        for rb in b.bindings:
            row: dict[str, Any] = {"subject": rb.subject, "role": rb.role, "scope": rb.scope}
            if rb.expires:
                row["expires"] = rb.expires.isoformat().replace("+00:00", "Z")
            if rb.created_by:
                row["created_by"] = rb.created_by
            rows.append(row)
        out["bindings"] = rows
    return out


def _unknown_keys(
    item: Mapping[Any, Any], allowed: Collection[str], where: str, problems: list[str]
) -> None:
    """A problem for each key that is not one of `allowed` (a typo must not pass quietly)."""
    for key in item:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            problems.append(f"{where}: unknown key `{key}`" + (f"; {hint}" if hint else ""))


def _list(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list")
        return []
    return value


def _subject(value: object, where: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{where}: is required")
        return None
    try:
        t, i = parse_subject_ref(value)  # type: ignore[arg-type]
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None
    key = f"{t}:{i}"
    too_long = check_length(key, "subject")
    if too_long:
        problems.append(f"{where}: {too_long}")
        return None
    return key


def _time(value: object, where: str, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        when = to_time(value)
    except ValueError:
        problems.append(f"{where}: `{value}` is not an ISO 8601 time such as 2027-01-01T00:00:00Z")
        return None
    why = time_range(when)
    if why is not None:
        problems.append(f"{where}: {why}")
        return None
    return when


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def plain_value(v: object) -> Any:
    """YAML scalars that JSON lacks (dates) become ISO strings, as a request would send them."""
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list):
        return [plain_value(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): plain_value(x) for k, x in v.items()}
    return v
