"""The examples in docs/envoy.md load: the route table parses, the policies compile."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.envoy.routes import RouteMatch, parse_routes
from pdp.evaluation import evaluate
from pdp.identity.result import Cause
from pdp.lang.load import load_paths
from pdp.store.document import load_bindings_file
from tests.helpers import compile_files, compile_text

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "envoy.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of the page tagged `lang` ("" for untagged ones)."""
    out: list[str] = []
    current: list[str] | None = None
    tag = ""
    for line in DOC.splitlines():
        if line.startswith("```"):
            if current is None:
                current, tag = [], line[3:].strip()
            else:
                if tag == lang:
                    out.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return out


def test_the_documented_route_table_parses_and_routes() -> None:
    (table_text,) = [b for b in blocks("yaml") if b.startswith("routes:")]
    # The page shows the example's own table, as it is.
    assert table_text == (ROOT / "policies" / "routes.yaml").read_text(encoding="utf-8")
    table = parse_routes(table_text, "docs/envoy.md")
    m = table.match("GET", "docs.example.com", "/tenants/acme/folders/7/documents/42")
    assert isinstance(m, RouteMatch) and m.resource.ancestors == ("folder/7",)
    m = table.match("PUT", "docs.example.com", "/tenants/acme/documents/search")
    assert isinstance(m, RouteMatch) and m.route.name == "documents.update"


def test_the_documented_policies_compile() -> None:
    policies = [b for b in blocks("") if b.lstrip().startswith("resource document")]
    assert len(policies) == 2  # the scope rule, the credential and connection rules
    for policy in policies:
        assert compile_text(policy).version


def test_scopes_limit_a_key_only_through_a_rule_like_the_documented_one() -> None:
    """What the page says of scopes: recorded and shown to policies, enforced by
    nothing else; the documented rule, added to the example policies, enforces them."""
    (block,) = [b for b in blocks("") if "context.authn.scopes" in b]
    # The rule itself: the block's lines between `actions ...` and the closing brace.
    lines = block.strip().splitlines()
    assert lines[0] == "resource document {" and lines[-1] == "}"
    rule = "\n".join(lines[2:-1]) + "\n"
    files = {
        p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").glob("*.pdp"))
    }
    plain = compile_files(files)
    documents = files["documents.pdp"].rstrip()
    assert documents.endswith("}")
    files["documents.pdp"] = documents[:-1] + rule + "}\n"
    scoped = compile_files(files)
    bindings = load_bindings_file(ROOT / "examples" / "bindings.yaml")
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def update(policy: CompiledPolicySet, ctx: Mapping[str, Any]) -> tuple[bool, tuple[str, ...]]:
        resource = Resource("document", "42", {"tenant": "acme"})
        req = Request(Subject("user", "alice"), Action("update"), resource, ctx, now)
        d = evaluate(policy, [req], bindings)[0]
        return d.allowed, d.reasons

    read_only = {"authn": {"method": "apikey", "scopes": ["documents:read"]}}
    assert update(plain, read_only)[0]  # alice may update: the scope is not enforced
    assert update(scoped, read_only) == (False, ("document.key-scope",))
    assert update(scoped, {"authn": {"method": "apikey", "scopes": []}})[0] is False
    assert update(scoped, {"authn": {"method": "apikey", "scopes": ["documents:write"]}})[0]
    assert update(scoped, {"authn": {"method": "bearer", "scopes": []}})[0]  # keys only
    assert update(scoped, {})[0]  # a pdp.v1 request naming its subject: no error, no deny


def test_every_authentication_cause_is_documented() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", DOC[DOC.index("| cause | meaning |") :]))
    assert {c.value for c in Cause} <= documented
    assert "`missing_claim` when a required one" in DOC


def test_the_documented_routes_with_the_example_policies_and_bindings() -> None:
    """The page's route table in front of the example document service: carol (viewer
    on folder/7) reads through the folder route; mallory (globex, shared document/42
    by mistake) is kept out by tenant isolation; sharing through the proxy follows the
    example policy's `context.ip` rule, `context.ip` being Envoy's source address."""
    root = ROOT
    loaded = load_paths([root / "policies"])
    assert loaded.policy_set is not None
    policy = compile_policy_set(loaded.policy_set)
    bindings = load_bindings_file(root / "examples" / "bindings.yaml")
    (table_text,) = [b for b in blocks("yaml") if b.startswith("routes:")]
    table = parse_routes(table_text)
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def decide(
        who: str, method: str, path: str, ip: str = "203.0.113.7"
    ) -> tuple[bool, tuple[str, ...]]:
        m = table.match(method, "docs.example.com", path)
        assert isinstance(m, RouteMatch)
        stype, sid = who.split(":")
        ctx = {"ip": ip, "source": {"address": ip}}  # as the Envoy mapping sets them
        req = Request(Subject(stype, sid), Action(m.route.action), m.resource, ctx, now)
        d = evaluate(policy, [req], bindings)[0]
        return d.allowed, d.reasons

    assert decide("user:carol", "GET", "/tenants/acme/folders/7/documents/42")[0]
    assert not decide("user:carol", "GET", "/tenants/acme/documents/42")[0]  # no folder known
    assert decide("user:mallory", "GET", "/tenants/acme/documents/42") == (
        False,
        ("document.tenant-isolation",),
    )
    share = "/tenants/acme/documents/42/share"
    # alice is acme's admin: from outside the office network no, from inside yes.
    assert decide("user:alice", "POST", share) == (False, ("document.share-off-network",))
    assert decide("user:alice", "POST", share, ip="10.20.30.40")[0]
