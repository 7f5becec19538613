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

from collections.abc import Collection, Mapping
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
from pdp.store.validate import non_finite

SECTIONS = ("subjects", "groups", "bindings")


class DocumentError(ValueError):
    """Every problem found in a bindings document, each naming where it is."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def load_bindings_file(path: str | Path, known_roles: Collection[str] | None = None) -> Bindings:
    """Read a bindings YAML file; `known_roles`, when given, rejects undeclared roles."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise DocumentError(str(path), [f"bindings files must be UTF-8 ({exc.reason})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DocumentError(
            str(path), [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from None
    return parse_bindings(data, str(path), known_roles)


BINDING_KEYS = ("subject", "role", "scope", "expires", "created_by")


def parse_bindings(
    data: object, source: str = "<bindings>", known_roles: Collection[str] | None = None
) -> Bindings:
    """A parsed YAML document → `Bindings`, or `DocumentError` listing every problem."""
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
        problems.append(
            "groups contain each other in a cycle: " + " → ".join(f"`{g}`" for g in cycle)
        )

    bindings: list[RoleBinding] = []
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
        if known_roles is not None and role not in known_roles:
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
        expires = _time(item.get("expires"), f"{where}.expires", problems)
        if key:
            bindings.append(
                RoleBinding(key, role, scope, expires, _opt_str(item.get("created_by")))
            )
    if problems:
        raise DocumentError(source, problems)
    return Bindings(subjects=subjects, groups=groups, bindings=tuple(bindings))


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
    return f"{t}:{i}"


def _time(value: object, where: str, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        return to_time(value)
    except ValueError:
        problems.append(f"{where}: `{value}` is not an ISO 8601 time such as 2027-01-01T00:00:00Z")
        return None


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
