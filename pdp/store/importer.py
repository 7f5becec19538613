"""Planning an import: what must change for the store to hold a bindings document.

Pure: the document and a snapshot of the stored state go in, an `ImportPlan` (or
`InvalidInput` listing every problem) comes out. `SqlStore.import_bindings` reads
the snapshot and applies the plan inside one transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.lang.graph import cycles
from pdp.store.document import Places
from pdp.store.errors import InvalidInput
from pdp.store.validate import GROUP_TYPE, MAX_ROLE_BYTES, RoleCatalog, check_length

BindingKey = tuple[str, str, str]  # (subject, scope, role)


@dataclass(frozen=True, slots=True)
class Change:
    """One change a write made, or an import would make."""

    op: str  # grant | update-expiry | revoke | set-attributes | add-member | remove-member
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.op} {self.target}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"op": self.op, "target": self.target, "detail": self.detail}


@dataclass
class StoredState:
    """What the store holds, as far as an import needs to know."""

    attributes: dict[str, Mapping[str, Any]]  # every stored subject → attributes
    memberships: set[tuple[str, str]]  # (group, member)
    bindings: dict[BindingKey, tuple[int, datetime | None]]  # → (row pk, expires_at)


@dataclass
class ImportPlan:
    """The changes, grouped the way they are applied."""

    set_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    add_members: list[tuple[str, str]] = field(default_factory=list)
    remove_members: list[tuple[str, str]] = field(default_factory=list)
    grants: list[RoleBinding] = field(default_factory=list)
    updates: list[tuple[int, RoleBinding]] = field(default_factory=list)  # (pk, new)
    revokes: list[tuple[BindingKey, int]] = field(default_factory=list)
    new_subjects: list[str] = field(default_factory=list)  # rows to create first
    skipped: list[RoleBinding] = field(default_factory=list)  # already expired

    def notes(self) -> list[str]:
        """What was left out, and why."""
        return [
            f"skipped {binding_text(rb)} for `{rb.subject}`: already expired" for rb in self.skipped
        ]

    def changes(self) -> list[Change]:
        """Every change in the order it is applied, for people and `--json`."""
        out = [Change("set-attributes", k, attrs_text(a)) for k, a in self.set_attributes.items()]
        out += [Change("add-member", g, m) for g, m in self.add_members]
        out += [Change("remove-member", g, m) for g, m in self.remove_members]
        out += [Change("grant", rb.subject, binding_text(rb)) for rb in self.grants]
        out += [Change("update-expiry", rb.subject, binding_text(rb)) for _, rb in self.updates]
        out += [Change("revoke", s, f"`{r}` in `{sc}`") for (s, sc, r), _ in self.revokes]
        return out

    def __bool__(self) -> bool:
        return bool(
            self.set_attributes
            or self.add_members
            or self.remove_members
            or self.grants
            or self.updates
            or self.revokes
        )


MAX_CYCLES_SHOWN = 20


def refused(problems: list[str]) -> InvalidInput:
    return InvalidInput("the import was refused, nothing changed:\n  " + "\n  ".join(problems))


def check_document(doc: Bindings, roles: RoleCatalog | None) -> None:
    """Problems that need no stored state: undeclared roles, conflicting duplicates,
    keys too long to store. (A document read by `parse_document` has none of them left;
    this is for `Bindings` made in code.)"""
    problems: list[str] = []
    if roles is not None:
        problems += roles.check_all(rb.role for rb in doc.bindings)
    seen: dict[BindingKey, datetime | None] = {}
    for rb in doc.bindings:
        k = (rb.subject, rb.scope, rb.role)
        if k in seen and seen[k] != rb.expires:
            problems.append(
                f"`{rb.role}` in `{rb.scope}` for `{rb.subject}` is listed twice "
                "with different expiries"
            )
        seen[k] = rb.expires
        for why in (
            check_length(rb.subject, "subject"),
            check_length(rb.scope, "scope"),
            check_length(rb.role, "role name", MAX_ROLE_BYTES),
        ):
            if why:
                problems.append(why)
    keys = set(doc.subjects) | set(doc.groups) | {m for ms in doc.groups.values() for m in ms}
    problems += sorted(filter(None, (check_length(k, "subject") for k in keys)))
    for g in doc.groups:
        if not g.startswith(GROUP_TYPE + ":"):
            problems.append(f"`{g}` is not a group; group ids are `group:<name>`")
    if problems:
        raise refused(problems)


def cycle_problems(
    memberships: set[tuple[str, str]], stored: set[tuple[str, str]], places: Places | None
) -> list[str]:
    """Every cycle the groups would form, each link named: the file's entry, or the store."""
    graph: dict[str, set[str]] = defaultdict(set)
    for g, m in memberships:
        graph[g].add(m)
    problems: list[str] = []
    for n, cycle in enumerate(cycles({g: sorted(ms) for g, ms in sorted(graph.items())})):
        if n == MAX_CYCLES_SHOWN:
            problems.append("… and more cycles")
            break
        links = []
        for g, m in zip(cycle, cycle[1:], strict=False):
            if (g, m) in stored:
                links.append(f"`{m}` in `{g}`: in the store")
            else:
                at = places.membership(g, m) if places is not None else None
                links.append(f"`{m}` in `{g}`: {at or 'in the document'}")
        problems.append(
            "groups would contain each other in a cycle: "
            + " → ".join(f"`{x}`" for x in cycle)
            + " ("
            + "; ".join(links)
            + ")"
        )
    return problems


def plan_import(
    doc: Bindings,
    stored: StoredState,
    *,
    replace: bool,
    now: datetime,
    places: Places | None = None,
) -> ImportPlan:
    """The changes that make `stored` hold `doc` (merge, or `replace` what it lacks).

    Merge: subjects listed get exactly the document's attributes; memberships and
    bindings listed are added; an expiry that differs is updated; nothing else is
    touched. Replace: also removes memberships and bindings the document lacks and
    clears the attributes of subjects it does not list.

    Bindings whose expiry has already passed grant nothing: they are skipped (and
    reported), not stored, so a document that keeps history still imports.
    """
    plan = ImportPlan()

    doc_members = {(g, m) for g, ms in doc.groups.items() for m in ms}
    plan.add_members = sorted(doc_members - stored.memberships)
    if replace:
        plan.remove_members = sorted(stored.memberships - doc_members)
    # A cycle may need both halves: one in the document, one in the store.
    kept = stored.memberships - set(plan.remove_members)
    problems = cycle_problems(kept | doc_members, kept - doc_members, places)
    if problems:
        raise refused(problems)

    for key, attrs in sorted(doc.subjects.items()):
        # A subject not stored yet counts as having no attributes.
        if dict(stored.attributes.get(key) or {}) != dict(attrs):
            plan.set_attributes[key] = dict(attrs)
    if replace:
        for key, attrs in sorted(stored.attributes.items()):
            if attrs and key not in doc.subjects:
                plan.set_attributes[key] = {}

    wanted: dict[BindingKey, RoleBinding] = {}
    for rb in doc.bindings:
        if rb.expires is not None and rb.expires <= now:
            plan.skipped.append(rb)
        else:
            wanted[(rb.subject, rb.scope, rb.role)] = rb
    # In document order: deterministic, and no sort of a million keys.
    for k, rb in wanted.items():
        have = stored.bindings.get(k)
        if have is None:
            plan.grants.append(rb)
        elif have[1] != rb.expires:
            plan.updates.append((have[0], rb))
    if replace:
        plan.revokes = sorted((k, pk) for k, (pk, _) in stored.bindings.items() if k not in wanted)

    referenced = (
        set(plan.set_attributes)
        | {g for g, _ in plan.add_members}
        | {m for _, m in plan.add_members}
        | {rb.subject for rb in plan.grants}
    )
    plan.new_subjects = sorted(referenced - stored.attributes.keys())
    return plan


def summary(changes: list[Change], *, applied: bool, dry_run: bool) -> str:
    """One line: how many changes of each kind were (or would be) made."""
    if not changes:
        return "nothing to change: the store already holds the document"
    counts: dict[str, int] = defaultdict(int)
    for ch in changes:
        counts[ch.op] += 1
    what = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
    return ("would apply: " if dry_run or not applied else "applied: ") + what


def until_text(expires: datetime | None) -> str:
    """` until <ISO time>` or nothing."""
    if expires is None:
        return ""
    return " until " + expires.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def binding_text(rb: RoleBinding) -> str:
    return f"`{rb.role}` in `{rb.scope}`{until_text(rb.expires)}"


def attrs_text(a: Mapping[str, Any]) -> str:
    return json.dumps(dict(a), sort_keys=True, default=str)
