"""Envoy checks end to end, without a server: real Envoy messages, real resolvers over
in-memory stores, a real compiled policy set and bindings, the real evaluation path.

Covers: allow and deny for each resolver, every authentication failure (each a 401
with the same body, each with its real cause for the audit log), unmatched routes,
both header encodings, anonymous routes, and what policies see in `context`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.engine.decision import Decision
from pdp.engine.request import Request
from pdp.envoy.authorize import CheckOutcome, EnvoyAuthorizer, EnvoySettings, header_values
from pdp.envoy.responses import FORBIDDEN_BODY
from pdp.envoy.routes import parse_routes
from pdp.evaluation import evaluate
from pdp.identity.apikeys import ApiKeyResolver, ApiKeys, KeyHasher, MemoryApiKeys, generate_key
from pdp.identity.jwks import JwksCache
from pdp.identity.jwt import JwtResolver, JwtSettings, MemoryRevocations
from pdp.identity.resolver import Authenticator
from pdp.identity.result import Identity
from pdp.identity.sessions import MemorySessions, SessionResolver, Sessions, new_session_id
from tests.envoy.support import check_request
from tests.helpers import compile_text
from tests.identity.keys import (
    AUDIENCE,
    ISSUER,
    NOW,
    T,
    claims,
    hmac_signed,
    jwks,
    public_jwk,
    public_pem,
    rsa_key,
    token,
    unsigned,
)

POLICY = """
role viewer
role editor : viewer

resource document {
  actions read, update

  @id("document.viewer-read")
  permit viewer to read

  @id("document.editor-update")
  permit editor to update

  @id("document.tenant-isolation")
  forbid any to * unless resource.tenant == subject.tenant

  # Machine keys change documents only with the write scope.
  @id("document.key-scope")
  forbid any to update
    when context.authn.method == "apikey" and not ("documents:write" in context.authn.scopes)

  # Debug views only from the internal network.
  @id("document.debug-internal")
  forbid any to read
    when context.http.query has debug and not in_cidr(context.source.address, "10.0.0.0/8")
}

resource health {
  actions read
  @id("health.public")
  permit any to read
}
"""

ROUTES = """
routes:
  - name: documents.read
    methods: [GET]
    path: /tenants/{tenant}/documents/{id}
    action: read
    resource: {type: document, id: "{id}", properties: {tenant: "{tenant}"}}
  - name: documents.update
    methods: [PUT]
    path: /tenants/{tenant}/documents/{id}
    action: update
    resource: {type: document, id: "{id}", properties: {tenant: "{tenant}"}}
  - name: health
    methods: [GET]
    path: /healthz
    action: read
    resource: {type: health, id: "service"}
    authentication: optional
"""

DOC = "/tenants/acme/documents/42"
PEPPER = b"k" * 32


class World:
    """The authorizer and everything behind it, with handles to make credentials."""

    def __init__(self) -> None:
        self.policy = compile_text(POLICY)
        acme = {"tenant": "acme"}
        self.bindings = Bindings(
            subjects={"user:alice": acme, "user:bob": acme, "service:billing": acme},
            bindings=(
                RoleBinding("user:alice", "editor", "tenant/acme"),
                RoleBinding("service:billing", "editor", "tenant/acme"),
            ),
        )
        self.revocations = MemoryRevocations()
        keyset = jwks(public_jwk(rsa_key(), "rsa-1"))
        cache = JwksCache(lambda: keyset, algorithms=("RS256",))
        jwt_resolver = JwtResolver(
            JwtSettings(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256",)),
            cache,
            is_revoked=self.revocations,
        )
        key_repo, session_repo = MemoryApiKeys(), MemorySessions()
        self.keys = ApiKeys(key_repo, KeyHasher(PEPPER))
        self.sessions = Sessions(session_repo)
        self.authenticator = Authenticator(
            [
                jwt_resolver,
                ApiKeyResolver(key_repo, KeyHasher(PEPPER)),
                SessionResolver(session_repo),
            ]
        )
        ids = itertools.count(1)
        self.authorizer = EnvoyAuthorizer(
            parse_routes(ROUTES),
            self.authenticator,
            EnvoySettings(remove_headers=("authorization",), realm="docs"),
            new_id=lambda: f"decision-{next(ids)}",
        )

    def decide(self, request: Request) -> Decision:
        return evaluate(self.policy, [request], self.bindings)[0]

    def check(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        at: timedelta = timedelta(0),
        decide: Callable[[Request], Decision] | None = None,
        **kw: Any,
    ) -> CheckOutcome:
        msg = check_request(method, path, headers or [], **kw)
        return self.authorizer.check(msg, decide or self.decide, NOW + at)


@pytest.fixture
def world() -> World:
    return World()


def bearer(t: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {t}")]


def api_key(k: str) -> list[tuple[str, str]]:
    return [("x-api-key", k)]


def session(sid: str) -> list[tuple[str, str]]:
    return [("cookie", f"theme=dark; pdp_session={sid}")]


ENCODINGS = pytest.mark.parametrize("encoding", ["map", "raw"])


# --- allow and deny, for each resolver -------------------------------------------------------


@ENCODINGS
def test_a_bearer_token_allows_and_names_the_subject_upstream(world: World, encoding: str) -> None:
    out = world.check("GET", DOC, bearer(token()), encoding=encoding)
    assert out.status == 200 and out.allowed
    assert header_values(out.response) == {
        "x-pdp-subject": "user:alice",
        "x-pdp-decision-id": out.decision_id,
    }
    assert list(out.response.ok_response.headers_to_remove) == ["authorization"]
    assert out.decision.reasons == ("document.viewer-read",)
    assert out.audit()["authn"] == {"result": "ok", "method": "bearer", "credential": "tok-1"}


@ENCODINGS
def test_a_bearer_token_of_a_subject_without_the_role_is_forbidden(
    world: World, encoding: str
) -> None:
    out = world.check("GET", DOC, bearer(token(sub="bob")), encoding=encoding)
    assert out.status == 403 and out.cause == "denied"
    assert out.response.denied_response.status.code == 403
    assert out.decision.reasons == ()  # default deny: no role


@ENCODINGS
def test_an_api_key_allows_within_its_scopes_only(world: World, encoding: str) -> None:
    writer = world.keys.create("service", "billing", now=NOW, scopes=["documents:write"])
    reader = world.keys.create("service", "billing", now=NOW, scopes=["documents:read"])
    ok = world.check("PUT", DOC, api_key(writer.key), encoding=encoding)
    assert ok.status == 200
    assert header_values(ok.response)["x-pdp-subject"] == "service:billing"
    no = world.check("PUT", DOC, api_key(reader.key), encoding=encoding)
    assert no.status == 403 and no.decision.reasons == ("document.key-scope",)
    # The same key sent as a bearer token is recognised as an API key.
    assert world.check("PUT", DOC, bearer(writer.key), encoding=encoding).status == 200


@ENCODINGS
def test_a_session_cookie_allows_and_denies(world: World, encoding: str) -> None:
    alice, _ = world.sessions.create("user", "alice", now=NOW)
    bob, _ = world.sessions.create("user", "bob", now=NOW)
    assert world.check("PUT", DOC, session(alice), encoding=encoding).status == 200
    out = world.check("PUT", DOC, session(bob), encoding=encoding)
    assert out.status == 403 and out.audit()["authn"]["method"] == "session"


def test_tenant_isolation_applies_to_the_tenant_in_the_path(world: World) -> None:
    out = world.check("GET", "/tenants/globex/documents/42", bearer(token()))
    assert out.status == 403 and out.decision.reasons == ("document.tenant-isolation",)


# --- every way authentication fails: 401, one body, the real cause in the audit -----------


def failures(w: World) -> dict[str, list[tuple[str, str]]]:
    """Credentials that establish no identity, by the cause the audit log must record."""
    key = w.keys.create("service", "billing", now=NOW - timedelta(days=1))
    expired_key = w.keys.create(
        "service", "billing", now=NOW - timedelta(days=2), expires_at=NOW - timedelta(days=1)
    )
    revoked_key = w.keys.create("service", "billing", now=NOW - timedelta(days=1))
    w.keys.revoke(revoked_key.record.prefix, now=NOW - timedelta(hours=1))
    rotated_key = w.keys.create("service", "billing", now=NOW - timedelta(days=1))
    w.keys.rotate(
        rotated_key.record.prefix, now=NOW - timedelta(hours=2), overlap=timedelta(hours=1)
    )
    w.revocations.revoke_token("tok-revoked")
    old = w.sessions.create(
        "user", "alice", now=NOW - timedelta(hours=13), idle_timeout=timedelta(days=1)
    )[0]
    idle = w.sessions.create("user", "alice", now=NOW - timedelta(hours=1))[0]
    gone, gone_record = w.sessions.create("user", "alice", now=NOW)
    w.sessions.revoke(gone_record.handle, now=NOW)
    return {
        "no_credential": [],
        "token_expired": bearer(token(exp=T - 3600)),
        "token_not_yet_valid": bearer(token(nbf=T + 3600)),
        "wrong_audience": bearer(token(aud="billing-api")),
        "wrong_issuer": bearer(token(iss="https://evil.example.com")),
        "bad_signature": bearer(token(rsa_key("attacker"))),
        "alg_not_allowed": bearer(unsigned({"alg": "none", "kid": "rsa-1"}, claims())),
        "unknown_kid": bearer(token(rsa_key("other"), kid="rsa-9")),
        "token_revoked": bearer(token(jti="tok-revoked")),
        "token_malformed": bearer("garbage"),
        "key_mismatch": api_key(f"pdp_{key.record.prefix}_{generate_key()[1]}"),
        "key_unknown": api_key(generate_key()[2]),
        "key_expired": api_key(expired_key.key),
        "key_revoked": api_key(revoked_key.key),
        "key_rotated": api_key(rotated_key.key),
        "key_malformed": api_key("let-me-in"),
        "session_expired": session(old),
        "session_idle": session(idle),
        "session_revoked": session(gone),
        "session_unknown": session(new_session_id()),
        "ambiguous_credentials": [("cookie", f"pdp_session={idle}; pdp_session={gone}")],
    }


def test_hmac_key_confusion_is_a_401_too(world: World) -> None:
    forged = hmac_signed({"alg": "HS256", "kid": "rsa-1"}, claims(), public_pem(rsa_key()))
    out = world.check("GET", DOC, bearer(forged))
    assert out.status == 401 and out.cause == "alg_not_allowed"


@ENCODINGS
def test_every_failure_is_a_401_with_its_real_cause_recorded(world: World, encoding: str) -> None:
    for expected, headers in failures(world).items():
        out = world.check("GET", DOC, headers, encoding=encoding)
        assert out.status == 401, expected
        assert out.cause == expected
        assert out.audit()["authn"]["result"] == "failed"
        assert out.audit()["authn"]["cause"] == expected
        assert out.decision.diagnostics[0].code == "unauthenticated"
        assert expected in out.decision.diagnostics[0].message
        assert out.request is None  # nothing was evaluated


def test_denials_look_the_same_whatever_the_cause(world: World) -> None:
    """The client learns nothing: same status, body, gRPC status and headers (only the
    decision id differs), for every cause of a 401; likewise for every 403."""

    def face(out: CheckOutcome) -> tuple[Any, ...]:
        r = out.response
        headers = dict(header_values(r))
        assert headers.pop("x-pdp-decision-id") == out.decision_id
        return (
            r.status.code,
            r.status.message,
            r.denied_response.status.code,
            r.denied_response.body,
            tuple(sorted(headers.items())),
            r.HasField("ok_response"),
        )

    unauthenticated = {face(world.check("GET", DOC, h)) for h in failures(world).values()}
    assert len(unauthenticated) == 1
    (one,) = unauthenticated
    assert one[2] == 401 and ("www-authenticate", 'Bearer realm="docs"') in one[4]
    for word in ("expired", "revoked", "signature", "kid", "exist", "idle", "unknown"):
        assert word not in str(one)

    forbidden = {
        face(world.check("GET", DOC, bearer(token(sub="bob")))),  # no role
        face(world.check("GET", "/tenants/globex/documents/1", bearer(token()))),  # forbid
        face(world.check("DELETE", DOC, bearer(token()))),  # no route
        face(world.check("GET", "/tenants/acme/documents/%2e%2e", bearer(token()))),  # bad path
    }
    assert len(forbidden) == 1 and next(iter(forbidden))[2] == 403


# --- routes --------------------------------------------------------------------------------


def test_an_unmatched_route_is_denied_by_default(world: World) -> None:
    out = world.check("DELETE", DOC, bearer(token()))
    assert out.status == 403 and out.cause == "no_route" and out.route is None
    assert out.audit()["authn"]["result"] == "ok"  # authenticated, then no route


def test_an_unauthenticated_client_cannot_probe_which_routes_exist(world: World) -> None:
    assert world.check("DELETE", DOC).status == 401
    assert world.check("GET", "/no/such/route").status == 401
    assert world.check("GET", DOC).status == 401


def test_a_refused_path_is_denied_with_its_cause(world: World) -> None:
    out = world.check("GET", "/tenants/acme/documents/a%2Fb", bearer(token()))
    assert out.status == 403 and out.cause == "bad_path"


def test_an_anonymous_route_needs_no_credential_but_judges_one_presented(world: World) -> None:
    out = world.check("GET", "/healthz", [("x-pdp-subject", "user:admin")])
    assert out.status == 200 and out.authn is None
    assert out.request is not None and out.request.subject.key == "anonymous:anonymous"
    assert "x-pdp-subject" not in header_values(out.response)
    assert "x-pdp-subject" in out.response.ok_response.headers_to_remove  # forged one dropped
    assert out.audit()["authn"] == {"result": "anonymous"}
    bad = world.check("GET", "/healthz", bearer(token(exp=T - 3600)))
    assert bad.status == 401 and bad.cause == "token_expired"  # never downgraded
    good = world.check("GET", "/healthz", bearer(token()))
    assert header_values(good.response)["x-pdp-subject"] == "user:alice"


# --- what policies see ---------------------------------------------------------------------


@ENCODINGS
def test_the_context_policies_see(world: World, encoding: str) -> None:
    out = world.check(
        "GET",
        DOC + "?view=full&tag=a&tag=b",
        [
            *bearer(token()),
            ("cookie", "pdp_session=abc"),
            ("x-api-key", "pdp_nope"),
            ("x-pdp-subject", "user:admin"),
            ("x-tenant-hint", "acme"),
        ],
        encoding=encoding,
        source_principal="spiffe://prod/ns/web/sa/frontend",
        extensions={"service": "docs"},
    )
    assert out.status == 200 and out.request is not None
    ctx = out.request.context
    http = ctx["http"]
    assert http["method"] == "GET" and http["path"] == DOC and http["host"] == "docs.example.com"
    assert http["query"] == {"view": "full", "tag": ["a", "b"]}
    assert http["route"] == "documents.read" and http["params"] == {"tenant": "acme", "id": "42"}
    assert http["headers"]["x-tenant-hint"] == "acme"
    for secret in ("authorization", "cookie", "x-api-key", "x-pdp-subject", ":path"):
        assert secret not in http["headers"]
    assert ctx["source"] == {
        "address": "203.0.113.7",
        "port": 51234,
        "principal": "spiffe://prod/ns/web/sa/frontend",
    }
    assert ctx["destination"]["principal"] == "spiffe://prod/ns/docs/sa/envoy"
    assert ctx["extensions"] == {"service": "docs"}
    assert ctx["authn"]["method"] == "bearer"
    assert ctx["authn"]["scopes"] == ["documents:read", "documents:write"]
    assert out.request.resource.properties["tenant"] == "acme"


def test_conditions_on_query_and_source_address(world: World) -> None:
    outside = world.check("GET", DOC + "?debug=1", bearer(token()))
    assert outside.status == 403 and outside.decision.reasons == ("document.debug-internal",)
    inside = world.check("GET", DOC + "?debug=1", bearer(token()), source="10.1.2.3")
    assert inside.status == 200


def test_a_context_header_allow_list(world: World) -> None:
    w = World()
    w.authorizer = EnvoyAuthorizer(
        parse_routes(ROUTES),
        w.authenticator,
        EnvoySettings(context_headers=("X-Keep", "authorization")),
        new_id=lambda: "d",
    )
    out = w.check("GET", DOC, [*bearer(token()), ("x-keep", "1"), ("x-drop", "2")])
    assert out.request is not None
    assert out.request.context["http"]["headers"] == {"x-keep": "1"}  # credentials never


# --- failing closed ------------------------------------------------------------------------


def test_an_error_while_deciding_is_a_403(world: World, caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> Decision:
        raise RuntimeError("bug")

    out = world.check("GET", DOC, bearer(token()), decide=broken)
    assert out.status == 403 and out.cause == "internal_error"
    assert "internal error" in caplog.text


def test_a_credential_store_outage_is_a_403_not_a_401(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = world.keys.create("service", "billing", now=NOW).key

    def down(*_: Any) -> Any:
        raise OSError("database is down")

    monkeypatch.setattr(MemoryApiKeys, "get", down)
    out = world.check("GET", DOC, api_key(key))
    # A 401 would make clients drop their credentials; the cause goes to the log only.
    assert out.status == 403 and out.cause == "store_unavailable"
    assert out.response.denied_response.body == FORBIDDEN_BODY


def test_too_many_query_parameters_is_a_bad_request(world: World) -> None:
    query = "&".join(f"p{i}=1" for i in range(200))
    out = world.check("GET", f"{DOC}?{query}", bearer(token()))
    assert out.status == 403 and out.cause == "bad_request"


@ENCODINGS
def test_too_many_headers_is_a_bad_request_not_a_partial_read(world: World, encoding: str) -> None:
    padding = [(f"x-pad-{i}", "1") for i in range(300)]
    out = world.check("GET", DOC, [*padding, *bearer(token())], encoding=encoding)
    assert out.status == 403 and out.cause == "bad_request"
    assert isinstance(world.check("GET", DOC, [*padding[:200], *bearer(token())]).authn, Identity)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"realm": 'a"b'},
        {"subject_header": "X-Subject"},
        {"remove_headers": (":path",)},
        {"decision_header": ""},
    ],
)
def test_settings_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EnvoySettings(**kwargs)


@ENCODINGS
def test_two_cookie_lines_are_read_in_either_encoding(world: World, encoding: str) -> None:
    sid, _ = world.sessions.create("user", "alice", now=NOW)
    one = world.check(
        "GET", DOC, [("cookie", "theme=dark"), ("cookie", f"pdp_session={sid}")], encoding=encoding
    )
    assert one.status == 200
    two = world.check(
        "GET",
        DOC,
        [("cookie", f"pdp_session={sid}"), ("cookie", f"pdp_session={new_session_id()}")],
        encoding=encoding,
    )
    assert two.status == 401 and two.cause == "ambiguous_credentials"
