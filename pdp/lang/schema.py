"""Optional attribute schema: the types of subject, resource and context attributes.

    subjects:
      user: {tenant: string, department: string, level: int}
    resources:
      document: {owner: string, tenant: string, archived: bool, tags: list}
    context: {ip: string, now: string}

Types: string, int, float, number, bool, list, record, any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pdp.lang.errors import PolicyError, PolicyLoadError, did_you_mean
from pdp.lang.source import SourceLoc

TYPES = ("string", "int", "float", "number", "bool", "list", "record", "any")
SECTIONS = ("subjects", "resources", "context")


@dataclass(frozen=True)
class Schema:
    """Attribute types per subject type, per resource type, and for the context."""

    subjects: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    context: Mapping[str, str] = field(default_factory=dict)


def load_schema(path: str | Path) -> Schema:
    """Read a schema file; raise `PolicyLoadError` naming the line of every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(
            [PolicyError("invalid_encoding", f"schema files must be UTF-8 ({exc.reason})", None)]
        ) from None
    errors: list[PolicyError] = []

    def err(node: yaml.Node | None, code: str, msg: str, help: str | None = None) -> None:
        if node is None:
            loc = None
        else:
            m, e = node.start_mark, node.end_mark
            end_col = e.column + 1 if e.line == m.line else m.column + 2
            loc = SourceLoc(name, m.line + 1, m.column + 1, m.line + 1, end_col)
        line = text.split("\n")[loc.line - 1] if loc else ""
        errors.append(PolicyError(code, msg, loc, help, source_line=line))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = (
            SourceLoc(name, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2)
            if mark
            else None
        )
        raise PolicyLoadError(
            [
                PolicyError(
                    "schema_syntax",
                    f"schema is not valid YAML: {getattr(exc, 'problem', exc)}",
                    loc,
                    source_line=text.split("\n")[loc.line - 1] if loc else "",
                )
            ]
        ) from None

    def mapping(node: yaml.Node | None, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        if node is None:
            return []
        if not isinstance(node, yaml.MappingNode):
            err(node, "schema_shape", f"{what} must be a mapping")
            return []
        pairs = []
        seen: dict[str, yaml.ScalarNode] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                err(k, "schema_shape", f"keys of {what} must be names")
                continue
            first = seen.setdefault(k.value, k)
            if first is not k:
                # YAML forbids it, PyYAML would keep the last silently: a type lost unseen.
                line = first.start_mark.line + 1
                err(
                    k,
                    "schema_shape",
                    f"`{k.value}` is listed twice in {what} (first at line {line})",
                )
                continue
            pairs.append((k, v))
        return pairs

    def attrs(node: yaml.Node, what: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in mapping(node, what):
            tname = v.value if isinstance(v, yaml.ScalarNode) else None
            if tname is None or tname.rstrip("?") not in TYPES:
                err(
                    v,
                    "schema_type",
                    f"`{tname}` is not a type" if tname else f"type of `{k.value}` must be a name",
                    help=did_you_mean(str(tname), TYPES) or "types: " + ", ".join(TYPES),
                )
                continue
            out[k.value] = tname.rstrip("?")
        return out

    sections: dict[str, yaml.Node] = {}
    for k, v in mapping(root, "the schema"):
        if k.value not in SECTIONS:
            err(k, "schema_shape", f"unknown section `{k.value}`", did_you_mean(k.value, SECTIONS))
        else:
            sections[k.value] = v
    subjects = {
        k.value: attrs(v, f"subject type `{k.value}`")
        for k, v in mapping(sections.get("subjects"), "`subjects`")
    }
    resources = {
        k.value: attrs(v, f"resource type `{k.value}`")
        for k, v in mapping(sections.get("resources"), "`resources`")
    }
    context = attrs(sections["context"], "`context`") if "context" in sections else {}
    if errors:
        raise PolicyLoadError(
            sorted(errors, key=lambda e: (e.loc.line, e.loc.column) if e.loc else (0, 0))
        )
    return Schema(subjects, resources, context)
