"""One RBAC+ABAC scenario, written for this engine, for Cedar (cedarpy) and for pycasbin.

A multi-tenant document service: tenants hold users, nested groups, folders and
documents. Roles (viewer < editor < admin) are granted per tenant to users and to
groups, once globally, and per document (sharing); `owner` is derived from the
resource. Attribute rules read the subject (tenant, clearance level), the resource
(archived, locked, public, classification, status, tags, an optional legal hold)
and the context (MFA, client IP).

The world and the requests are generated from a fixed seed, independently of any
engine; `ours_inputs()`, `cedar_inputs()` and `casbin_inputs()` then translate
them into each engine's native inputs. Every request carries every attribute a
rule reads (the optional `legal_hold` is guarded by `has`), because the engines
treat a missing attribute differently: ours denies on an erroring forbid, Cedar
skips it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import casbin  # type: ignore[import-untyped]
import cedarpy
from casbin.model import FastModel, Model  # type: ignore[import-untyped]

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.lang.load import load_texts

SEED = 20261126
N_REQUESTS = 3000
# Decisions are taken at a fixed instant so that expiry checks never depend on the clock.
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

TENANTS = ("acme", "globex", "initech", "umbrella")
USERS_PER_TENANT = 30
DOCUMENTS_PER_TENANT = 100
FOLDERS_PER_TENANT = 20
ACTIONS: Mapping[str, tuple[str, ...]] = {
    "document": ("read", "comment", "update", "delete", "share"),
    "folder": ("list", "create", "delete"),
}
TAGS = ("open-comments", "finance", "hr", "roadmap")

# --------------------------------------------------------------------------- ours

POLICY_TEXT = """\
role viewer
role editor : viewer
role admin  : editor

derived role owner on document when resource.owner == subject.id
derived role owner on folder   when resource.owner == subject.id

resource document {
  actions read, comment, update, delete, share

  permit viewer to read
  permit viewer to comment when resource.status in ["draft", "review"]
  permit any    to comment when resource.tags contains "open-comments"
  permit editor to update unless resource.archived
  permit editor to share when subject.level >= 3 and resource.classification != "secret"
  permit owner  to read, update, delete, share
  permit admin  to *
  permit any    to read when resource.public

  forbid any to update, delete when resource.locked
  forbid any to delete, share unless context.mfa or in_cidr(context.ip, "10.0.0.0/8")
  forbid any to read, comment when resource.classification == "secret" and subject.level < 4
  forbid any to delete when resource has legal_hold and resource.legal_hold
  @id("document-tenant-isolation")
  forbid any to * unless resource.tenant == subject.tenant
}

resource folder {
  actions list, create, delete

  permit viewer to list
  permit editor to create unless resource.archived
  permit owner  to *
  permit admin  to *

  forbid any to delete when resource.protected
  forbid any to delete unless context.mfa
  @id("folder-tenant-isolation")
  forbid any to * unless resource.tenant == subject.tenant
}
"""

# -------------------------------------------------------------------------- Cedar

# Cedar has no scoped role bindings, so the same facts live in the entity graph:
# User -> Group -> Role::"admin" -> Role::"editor" -> Role::"viewer" for tenant and
# global grants, and each document's `viewers` / `editors` sets for per-document
# shares. Tenant-scoped grants become plain Role parents; that is equivalent here
# because every tenant grant is in the holder's own tenant and tenant isolation
# forbids everything else.
CEDAR_POLICIES = """\
permit (principal, action == Action::"read", resource is Document)
when { principal in Role::"viewer" || principal in resource.viewers
       || principal in resource.editors };

permit (principal, action == Action::"comment", resource is Document)
when { (principal in Role::"viewer" || principal in resource.viewers
        || principal in resource.editors)
       && ["draft", "review"].contains(resource.status) };

permit (principal, action == Action::"comment", resource is Document)
when { resource.tags.contains("open-comments") };

permit (principal, action == Action::"update", resource is Document)
when { principal in Role::"editor" || principal in resource.editors }
unless { resource.archived };

permit (principal, action == Action::"share", resource is Document)
when { (principal in Role::"editor" || principal in resource.editors)
       && principal.level >= 3 && resource.classification != "secret" };

permit (principal,
        action in [Action::"read", Action::"update", Action::"delete", Action::"share"],
        resource is Document)
when { resource.owner == principal };

permit (principal, action, resource is Document) when { principal in Role::"admin" };

permit (principal, action == Action::"read", resource is Document) when { resource.public };

forbid (principal, action in [Action::"update", Action::"delete"], resource is Document)
when { resource.locked };

forbid (principal, action in [Action::"delete", Action::"share"], resource is Document)
unless { context.mfa || ip(context.ip).isInRange(ip("10.0.0.0/8")) };

forbid (principal, action in [Action::"read", Action::"comment"], resource is Document)
when { resource.classification == "secret" && principal.level < 4 };

forbid (principal, action == Action::"delete", resource is Document)
when { resource has legal_hold && resource.legal_hold };

permit (principal, action == Action::"list", resource is Folder)
when { principal in Role::"viewer" };

permit (principal, action == Action::"create", resource is Folder)
when { principal in Role::"editor" }
unless { resource.archived };

permit (principal, action, resource is Folder) when { resource.owner == principal };

permit (principal, action, resource is Folder) when { principal in Role::"admin" };

forbid (principal, action == Action::"delete", resource is Folder) when { resource.protected };

forbid (principal, action == Action::"delete", resource is Folder) unless { context.mfa };

@id("tenant-isolation")
forbid (principal, action, resource) unless { resource.tenant == principal.tenant };
"""

# ------------------------------------------------------------------------ pycasbin

# Role inclusion, groups and scopes are role-manager links: a grant of `editor` in
# `tenant/acme` is the node `editor@tenant/acme`, which links to
# `viewer@tenant/acme`; users link to groups, groups to groups and to role nodes.
# Conditions are named by each policy line and spelled out in the one matcher, so
# the matcher is parsed once per call rather than once per line as `eval()` would.
CASBIN_CONDITIONS: Mapping[str, str] = {
    "always": "true",
    "not_archived": "!r.obj.archived",
    "public": "r.obj.public",
    "status_open": 'r.obj.status in ("draft", "review")',
    "open_comments": '"open-comments" in r.obj.tags',
    "share_ok": 'r.sub.level >= 3 && r.obj.classification != "secret"',
    "locked": "r.obj.locked",
    "no_mfa_no_vpn": '!(r.ctx.mfa || ipMatch(r.ctx.ip, "10.0.0.0/8"))',
    "no_mfa": "!r.ctx.mfa",
    "secret_low": 'r.obj.classification == "secret" && r.sub.level < 4',
    "legal_hold": "r.obj.legal_hold",
    "protected": "r.obj.protected",
    "cross_tenant": "r.obj.tenant != r.sub.tenant",
}

_CASBIN_ROLE = " || ".join(
    (
        'p.role == "any"',
        'p.role == "owner" && r.obj.owner == r.sub.id',
        'g(r.sub.key, p.role + "@global")',
        'g(r.sub.key, p.role + "@tenant/" + r.obj.tenant)',
        'g(r.sub.key, p.role + "@" + r.rtype + "/" + r.obj.id)',
    )
)
_CASBIN_COND = " || ".join(
    f'p.cond == "{name}"' if expr == "true" else f'p.cond == "{name}" && ({expr})'
    for name, expr in CASBIN_CONDITIONS.items()
)

CASBIN_MODEL = f"""\
[request_definition]
r = sub, rtype, act, obj, ctx

[policy_definition]
p = role, rtype, act, cond, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = r.rtype == p.rtype && r.act == p.act && ({_CASBIN_ROLE}) && ({_CASBIN_COND})
"""

# role, resource type, actions (space-separated, `*` for all), condition, effect
CASBIN_POLICY: tuple[tuple[str, str, str, str, str], ...] = (
    ("viewer", "document", "read", "always", "allow"),
    ("viewer", "document", "comment", "status_open", "allow"),
    ("any", "document", "comment", "open_comments", "allow"),
    ("editor", "document", "update", "not_archived", "allow"),
    ("editor", "document", "share", "share_ok", "allow"),
    ("owner", "document", "read update delete share", "always", "allow"),
    ("admin", "document", "*", "always", "allow"),
    ("any", "document", "read", "public", "allow"),
    ("any", "document", "update delete", "locked", "deny"),
    ("any", "document", "delete share", "no_mfa_no_vpn", "deny"),
    ("any", "document", "read comment", "secret_low", "deny"),
    ("any", "document", "delete", "legal_hold", "deny"),
    ("any", "document", "*", "cross_tenant", "deny"),
    ("viewer", "folder", "list", "always", "allow"),
    ("editor", "folder", "create", "not_archived", "allow"),
    ("owner", "folder", "*", "always", "allow"),
    ("admin", "folder", "*", "always", "allow"),
    ("any", "folder", "delete", "protected", "deny"),
    ("any", "folder", "delete", "no_mfa", "deny"),
    ("any", "folder", "*", "cross_tenant", "deny"),
)
ROLE_INCLUDES: Mapping[str, str] = {"admin": "editor", "editor": "viewer"}

# ---------------------------------------------------------- the engine-free world


@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant: str
    level: int

    @property
    def key(self) -> str:
        return f"user:{self.id}"


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    members: tuple[str, ...]  # subject keys: `user:<id>` or `group:<id>`

    @property
    def key(self) -> str:
        return f"group:{self.id}"


@dataclass(frozen=True, slots=True)
class Grant:
    subject: str  # `user:<id>` or `group:<id>`
    role: str
    scope: str  # `global`, `tenant/<t>` or `document/<id>`


@dataclass(frozen=True, slots=True)
class Thing:
    """A document or folder; `attrs` are what the policies read (owner is a user id)."""

    type: str
    id: str
    attrs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Case:
    """One request, engine-neutral."""

    user: User
    thing: Thing
    action: str
    context: Mapping[str, Any]

    def describe(self) -> str:
        """A one-line rendering, for reporting a disagreement."""
        return (
            f"user={self.user.id} (tenant={self.user.tenant}, level={self.user.level}) "
            f"action={self.action} {self.thing.type}={self.thing.id} "
            f"attrs={dict(self.thing.attrs)} context={dict(self.context)}"
        )


@dataclass(frozen=True)
class World:
    users: Sequence[User]
    groups: Sequence[Group]
    grants: Sequence[Grant]
    things: Sequence[Thing]


def build_world(seed: int = SEED) -> World:
    """Tenants with users, nested groups, role grants, folders and documents."""
    rnd = random.Random(seed)
    users: list[User] = []
    groups: list[Group] = []
    grants: list[Grant] = []
    things: list[Thing] = []
    for t in TENANTS:
        people = [User(f"{t}-u{i:02d}", t, rnd.randint(1, 5)) for i in range(USERS_PER_TENANT)]
        users.extend(people)
        for u in people:
            # Most users hold a tenant role of their own; some only get roles via groups.
            role = rnd.choices(("viewer", "editor", "admin", None), (40, 20, 5, 35))[0]
            if role is not None:
                grants.append(Grant(u.key, role, f"tenant/{t}"))
        eng = [u.key for u in people if rnd.random() < 0.3]
        legal = [u.key for u in people if rnd.random() < 0.15]
        staff = [u.key for u in people if rnd.random() < 0.4]
        # `eng` sits inside `staff`: its members get editor directly and viewer twice over.
        groups.append(Group(f"{t}-eng", tuple(eng)))
        groups.append(Group(f"{t}-legal", tuple(legal)))
        groups.append(Group(f"{t}-staff", (*staff, f"group:{t}-eng")))
        grants.append(Grant(f"group:{t}-eng", "editor", f"tenant/{t}"))
        grants.append(Grant(f"group:{t}-staff", "viewer", f"tenant/{t}"))
        for i in range(FOLDERS_PER_TENANT):
            things.append(
                Thing(
                    "folder",
                    f"{t}-f{i:02d}",
                    {
                        "tenant": t,
                        "owner": rnd.choice(people).id,
                        "archived": rnd.random() < 0.1,
                        "protected": rnd.random() < 0.2,
                    },
                )
            )
        for i in range(DOCUMENTS_PER_TENANT):
            doc_id = f"{t}-d{i:03d}"
            attrs: dict[str, Any] = {
                "tenant": t,
                "owner": rnd.choice(people).id,
                "archived": rnd.random() < 0.1,
                "public": rnd.random() < 0.1,
                "locked": rnd.random() < 0.1,
                "classification": rnd.choices(("public", "internal", "secret"), (30, 55, 15))[0],
                "status": rnd.choice(("draft", "review", "final")),
                "tags": sorted(tag for tag in TAGS if rnd.random() < 0.25),
            }
            if rnd.random() < 0.2:
                attrs["legal_hold"] = rnd.random() < 0.5
            things.append(Thing("document", doc_id, attrs))
            if rnd.random() < 0.25:
                for u in rnd.sample(people, rnd.randint(1, 2)):
                    role = rnd.choice(("viewer", "editor"))
                    grants.append(Grant(u.key, role, f"document/{doc_id}"))
    # One support engineer is admin everywhere, still bound by tenant isolation.
    grants.append(Grant(users[0].key, "admin", "global"))
    return World(users, groups, grants, things)


def build_cases(world: World, n: int = N_REQUESTS, seed: int = SEED) -> list[Case]:
    """`n` requests: mostly within a tenant, some cross-tenant, some by the owner."""
    rnd = random.Random(seed + 1)
    by_tenant: dict[str, list[User]] = {}
    for u in world.users:
        by_tenant.setdefault(u.tenant, []).append(u)
    users = {u.id: u for u in world.users}
    documents = [t for t in world.things if t.type == "document"]
    folders = [t for t in world.things if t.type == "folder"]
    cases: list[Case] = []
    for _ in range(n):
        thing = rnd.choice(documents) if rnd.random() < 0.85 else rnd.choice(folders)
        tenant = thing.attrs["tenant"]
        draw = rnd.random()
        if draw < 0.15:
            user = users[thing.attrs["owner"]]
        elif draw < 0.9:
            user = rnd.choice(by_tenant[tenant])
        else:
            user = rnd.choice(by_tenant[rnd.choice([t for t in TENANTS if t != tenant])])
        if rnd.random() < 0.5:
            ip = f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        else:
            ip = f"203.0.113.{rnd.randint(1, 254)}"
        context = {"mfa": rnd.random() < 0.5, "ip": ip}
        cases.append(Case(user, thing, rnd.choice(ACTIONS[thing.type]), context))
    return cases


# ------------------------------------------------------------ per-engine inputs


@dataclass(frozen=True)
class OursInputs:
    policy: CompiledPolicySet
    bindings: Bindings
    requests: list[Request]


@dataclass(frozen=True)
class CedarInputs:
    policies: Any  # cedarpy.PolicySet
    entities: cedarpy.Entities
    requests: list[dict[str, Any]]


@dataclass(frozen=True)
class CasbinInputs:
    enforcer: Any  # casbin.Enforcer
    requests: list[tuple[Any, ...]]


def ours_inputs(world: World, cases: Sequence[Case], policy_text: str = POLICY_TEXT) -> OursInputs:
    """Our compiled policy set, the bindings and one `Request` per case."""
    policy = compile_policy_set(load_texts({"scenario.pdp": policy_text}).unwrap())
    bindings = Bindings(
        subjects={},
        groups={g.key: frozenset(g.members) for g in world.groups},
        bindings=tuple(RoleBinding(g.subject, g.role, g.scope) for g in world.grants),
    )
    return OursInputs(policy, bindings, [our_request(c) for c in cases])


def our_request(case: Case) -> Request:
    """The case as our engine's `Request`."""
    return Request(
        subject=Subject(
            "user", case.user.id, {"tenant": case.user.tenant, "level": case.user.level}
        ),
        action=Action(case.action),
        resource=Resource(case.thing.type, case.thing.id, dict(case.thing.attrs)),
        context=dict(case.context),
        now=NOW,
    )


def _cedar_uid(type_: str, id_: str) -> dict[str, dict[str, str]]:
    return {"__entity": {"type": type_, "id": id_}}


def _cedar_key(subject_key: str) -> dict[str, str]:
    kind, _, id_ = subject_key.partition(":")
    return {"type": kind.capitalize(), "id": id_}


def cedar_inputs(world: World, cases: Sequence[Case]) -> CedarInputs:
    """A parsed `PolicySet`, a parsed `Entities` graph and one request dict per case."""
    parents: dict[str, list[dict[str, str]]] = {}
    shares: dict[str, dict[str, list[Any]]] = {}
    for g in world.groups:
        for m in g.members:
            parents.setdefault(m, []).append({"type": "Group", "id": g.id})
    for grant in world.grants:
        if grant.scope.startswith("document/"):
            doc = shares.setdefault(grant.scope.removeprefix("document/"), {})
            _, _, uid = grant.subject.partition(":")
            doc.setdefault(f"{grant.role}s", []).append(_cedar_uid("User", uid))
        else:
            parents.setdefault(grant.subject, []).append({"type": "Role", "id": grant.role})
    entities: list[dict[str, Any]] = [
        {
            "uid": {"type": "Role", "id": role},
            "attrs": {},
            "parents": [{"type": "Role", "id": ROLE_INCLUDES[role]}]
            if role in ROLE_INCLUDES
            else [],
        }
        for role in ("viewer", "editor", "admin")
    ]
    for g in world.groups:
        entities.append({"uid": _cedar_key(g.key), "attrs": {}, "parents": parents.get(g.key, [])})
    for u in world.users:
        entities.append(
            {
                "uid": _cedar_key(u.key),
                "attrs": {"tenant": u.tenant, "level": u.level},
                "parents": parents.get(u.key, []),
            }
        )
    for t in world.things:
        attrs: dict[str, Any] = {**t.attrs, "owner": _cedar_uid("User", t.attrs["owner"])}
        if t.type == "document":
            attrs["viewers"] = shares.get(t.id, {}).get("viewers", [])
            attrs["editors"] = shares.get(t.id, {}).get("editors", [])
        entities.append(
            {"uid": {"type": t.type.capitalize(), "id": t.id}, "attrs": attrs, "parents": []}
        )
    requests = [
        {
            # Structured ids rather than `User::"x"` text: Cedar skips its id parser,
            # about a third of a per-call decision here.
            "principal": {"type": "User", "id": c.user.id},
            "action": {"type": "Action", "id": c.action},
            "resource": {"type": c.thing.type.capitalize(), "id": c.thing.id},
            # A string context skips cedarpy's per-call json.dumps of a dict.
            "context": json.dumps(dict(c.context)),
        }
        for c in cases
    ]
    return CedarInputs(
        cedarpy.PolicySet.from_str(CEDAR_POLICIES),
        cedarpy.Entities.from_json_str(json.dumps(entities)),
        requests,
    )


def casbin_enforcer(fast: bool = True) -> Any:
    """An enforcer holding the scenario's model and policy lines, without role links.

    `fast` builds a `FastEnforcer` whose policy lines are indexed by (type, action),
    pycasbin's own answer to scanning every line.
    """
    if fast:
        model: Any = FastModel([1, 2])
        model.load_model_from_text(CASBIN_MODEL)
        enforcer: Any = casbin.FastEnforcer(model, cache_key_order=[1, 2])
    else:
        model = Model()
        model.load_model_from_text(CASBIN_MODEL)
        enforcer = casbin.Enforcer(model)
    rows: list[list[str]] = []
    for role, rtype, acts, cond, eft in CASBIN_POLICY:
        for act in ACTIONS[rtype] if acts == "*" else acts.split():
            rows.append([role, rtype, act, cond, eft])
    enforcer.add_policies(rows)
    return enforcer


def casbin_inputs(world: World, cases: Sequence[Case], fast: bool = True) -> CasbinInputs:
    """A kept enforcer with the scenario's role links and one `enforce` argument tuple per case."""
    enforcer = casbin_enforcer(fast)
    links: list[list[str]] = []
    scopes: set[str] = set()
    for g in world.groups:
        links.extend([m, g.key] for m in g.members)
    for grant in world.grants:
        links.append([grant.subject, f"{grant.role}@{grant.scope}"])
        scopes.add(grant.scope)
    for scope in sorted(scopes):
        links.extend([f"{a}@{scope}", f"{b}@{scope}"] for a, b in ROLE_INCLUDES.items())
    enforcer.add_grouping_policies(links)
    requests: list[tuple[Any, ...]] = []
    for c in cases:
        # Attribute objects rather than dicts: simpleeval tries getattr first.
        sub = SimpleNamespace(
            key=c.user.key, id=c.user.id, tenant=c.user.tenant, level=c.user.level
        )
        obj = SimpleNamespace(id=c.thing.id, **{"legal_hold": False, **c.thing.attrs})
        requests.append((sub, c.thing.type, c.action, obj, SimpleNamespace(**c.context)))
    return CasbinInputs(enforcer, requests)
