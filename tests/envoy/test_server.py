"""Envoy ext_authz through the real server: `pdp serve` on a loopback port, Envoy's own
protobufs over gRPC, resolvers over the SQL store, the key set fetched from a local
JWKS URL, and the audit log on disk.

One server serves the whole module (start-up costs more than all the checks). Every
case checks the answer Envoy would apply *and* the audit record of that decision,
with its real cause, which never reaches the client.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.audit.query import Filter, make_filter
from pdp.audit.read import JsonlSource
from pdp.audit.record import DecisionRecord
from pdp.cli.main import main
from pdp.envoy.authorize import header_values
from pdp.envoy.responses import FORBIDDEN_BODY, UNAUTHORIZED_BODY
from pdp.identity.apikeys import ApiKeys, KeyHasher
from pdp.identity.sessions import Sessions
from pdp.server.app import PdpServer
from pdp.server.config import ServerConfig, load_config
from pdp.server.envoy_service import SERVICE_NAME as ENVOY_SERVICE
from pdp.store.identity import SqlApiKeys, SqlSessions, SqlTokenRevocations
from pdp.store.sql import SqlStore
from pdp.v1 import decision_pb2 as pb
from pdp.v1 import decision_pb2_grpc as pb_grpc
from tests.envoy.support import check_request
from tests.httpd import serving, trickling
from tests.identity.keys import (
    AUDIENCE,
    ISSUER,
    jwks,
    public_jwk,
    rsa_key,
    token,
    unsigned,
)
from tests.server.support import free_port, wait_for

POLICY = """
role viewer
role editor : viewer

resource document {
  actions read, update, share

  @id("document.viewer-read")
  permit viewer to read

  @id("document.editor-update")
  permit editor to update, share

  @id("document.tenant-isolation")
  forbid any to * unless resource.tenant == subject.tenant

  # As in the example policies: sharing only from the corporate network.
  @id("document.share-off-network")
  forbid any to share unless context has ip and in_cidr(context.ip, "10.0.0.0/8")
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
  - name: documents.share
    methods: [POST]
    path: /tenants/{tenant}/documents/{id}/share
    action: share
    resource: {type: document, id: "{id}", properties: {tenant: "{tenant}"}}
  - name: health
    methods: [GET]
    path: /healthz
    action: read
    resource: {type: health, id: service}
    authentication: optional
"""

BINDINGS = """
subjects:
  - {id: user:alice, attributes: {tenant: acme}}
  - {id: user:bob, attributes: {tenant: acme}}
  - {id: service:billing, attributes: {tenant: acme}}
bindings:
  - {subject: user:alice, role: editor, scope: tenant/acme}
  - {subject: user:bob, role: viewer, scope: tenant/acme}
  - {subject: service:billing, role: viewer, scope: tenant/acme}
"""

PEPPER = "p" * 40
DOC = "/tenants/acme/documents/42"


class _Jwks(BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@dataclass
class World:
    server: PdpServer
    envoy: Any  # AuthorizationStub
    pdp: pb_grpc.DecisionServiceStub
    channel: grpc.Channel
    audit: Path
    policies: Path
    store: SqlStore
    keys: ApiKeys
    sessions: Sessions
    revocations: SqlTokenRevocations

    def records(self) -> dict[str, DecisionRecord]:
        page = JsonlSource(self.audit).search(Filter(), 10_000)
        assert not page.problems
        return {r.decision_id: r for r in page.records}

    def check(self, *args: Any, **kw: Any) -> tuple[int, dict[str, str], str, Any]:
        """(HTTP status, headers, body, response) of one Check."""
        resp = self.envoy.Check(check_request(*args, **kw), timeout=10)
        if resp.HasField("ok_response"):
            assert resp.status.code == 0
            return 200, dict(header_values(resp)), "", resp
        assert resp.status.code == 7  # PERMISSION_DENIED
        d = resp.denied_response
        return d.status.code, dict(header_values(resp)), d.body, resp


def _config(
    root: Path, store_url: str, flags: dict[str, Any], *, routes: str | None = None
) -> ServerConfig:
    """A server on `root`: the test policy (and `routes`), its bindings file, `flags`."""
    policies = root / "policies"
    policies.mkdir()
    (policies / "docs.pdp").write_text(POLICY, encoding="utf-8")
    if routes is not None:
        (policies / "routes.yaml").write_text(routes, encoding="utf-8")
    (root / "bindings.yaml").write_text(BINDINGS, encoding="utf-8")
    return load_config(
        None,
        environ={"PDP_APIKEY_PEPPER": PEPPER},
        flags={
            "listen": "127.0.0.1:0",
            "policies": str(policies),
            "store.bindings_file": str(root / "bindings.yaml"),
            "store.url": store_url,
            "reload.debounce_ms": 50,
            **flags,
        },
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("envoy-server")
    _Jwks.body = jwks(public_jwk(rsa_key(), "rsa-1"))
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    db = f"sqlite:///{root / 'pdp.db'}"
    cfg = _config(
        root,
        db,
        routes=ROUTES,
        flags={
            "audit.path": str(root / "audit"),
            "envoy.enabled": True,
            "envoy.remove_headers": ["authorization", "x-api-key"],
            "identity.jwt.issuer": ISSUER,
            "identity.jwt.audiences": [AUDIENCE],
            "identity.jwt.algorithms": ["RS256"],
            "identity.jwt.jwks_url": f"http://127.0.0.1:{http.server_port}/jwks.json",
            "identity.jwt.jwks_min_refresh": 1,
            "identity.jwt.revocation_refresh": 0.1,
            "identity.jwt.properties": {"tenant": "tenant"},
            "identity.apikeys.enabled": True,
            "identity.sessions.enabled": True,
            "identity.sessions.idle_timeout": 600,
        },
    )
    policies = root / "policies"
    server = PdpServer(cfg)
    port = server.start()
    store = SqlStore(db)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield World(
            server,
            external_auth_pb2_grpc.AuthorizationStub(channel),
            pb_grpc.DecisionServiceStub(channel),
            channel,
            root / "audit",
            policies,
            store,
            ApiKeys(SqlApiKeys(store), KeyHasher(PEPPER.encode())),
            Sessions(SqlSessions(store)),
            SqlTokenRevocations(store),
        )
    finally:
        channel.close()
        server.stop(0.5)
        store.close()
        http.shutdown()
        http.server_close()


def now() -> datetime:
    return datetime.now(UTC)


def jwt_now(**claims: Any) -> str:
    """A token valid now (the server decides on the real clock)."""
    t = int(time.time())
    base: dict[str, Any] = {"iat": t - 60, "nbf": t - 60, "exp": t + 600}
    base.update(claims)
    return token(**base)


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tok}")]


# --- the credentials of each case, made in the store or signed here ----------------------


@pytest.fixture(scope="module")
def creds(world: World) -> dict[str, list[tuple[str, str]]]:
    """Request headers per case name; the expected outcome is in CASES."""
    t = int(time.time())
    keys, sessions = world.keys, world.sessions
    good_key = keys.create("service", "billing", now=now(), scopes=["documents:read"]).key
    expired_key = keys.create(
        "service", "billing", now=now() - timedelta(hours=2), expires_at=now() - timedelta(hours=1)
    ).key
    revoked = keys.create("service", "billing", now=now())
    keys.revoke(revoked.record.prefix, now=now())
    rotated = keys.create("service", "billing", now=now() - timedelta(hours=1))
    keys.rotate(rotated.record.prefix, now=now() - timedelta(minutes=5), overlap=timedelta(0))
    prefix = good_key.split("_")[1]
    wrong_secret = f"pdp_{prefix}_{'x' * 43}"
    unknown_key = f"pdp_{'q' * 12}_{'y' * 43}"
    good_session, _ = sessions.create("user", "bob", now=now())
    expired_session, _ = sessions.create(
        "user", "bob", now=now() - timedelta(hours=2), lifetime=timedelta(hours=1)
    )
    idle_session, _ = sessions.create(
        "user", "bob", now=now() - timedelta(hours=1), idle_timeout=timedelta(minutes=20)
    )
    revoked_session, rec = sessions.create("user", "bob", now=now())
    sessions.revoke(rec.handle, now=now())
    world.revocations.revoke_token("tok-revoked", issuer=ISSUER, now=now())
    return {
        "jwt ok": bearer(jwt_now()),
        "jwt expired": bearer(jwt_now(exp=t - 3600, iat=t - 7200, nbf=t - 7200)),
        "jwt not yet valid": bearer(jwt_now(nbf=t + 3600)),
        "jwt wrong audience": bearer(jwt_now(aud="another-api")),
        "jwt wrong issuer": bearer(jwt_now(iss="https://evil.example.com")),
        "jwt bad signature": bearer(
            token(rsa_key("attacker"), iat=t - 60, nbf=t - 60, exp=t + 600)
        ),
        "jwt alg none": bearer(
            unsigned({"alg": "none", "kid": "rsa-1"}, {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"})
        ),
        "jwt unknown kid": bearer(
            token(rsa_key("rsa-9"), kid="rsa-9", iat=t - 60, nbf=t - 60, exp=t + 600)
        ),
        "jwt revoked jti": bearer(jwt_now(jti="tok-revoked")),
        "apikey ok": [("x-api-key", good_key)],
        "apikey in bearer ok": bearer(good_key),
        "apikey wrong secret": [("x-api-key", wrong_secret)],
        "apikey unknown": [("x-api-key", unknown_key)],
        "apikey expired": [("x-api-key", expired_key)],
        "apikey revoked": [("x-api-key", revoked.key)],
        "apikey rotated": [("x-api-key", rotated.key)],
        "session ok": [("cookie", f"theme=dark; pdp_session={good_session}")],
        "session expired": [("cookie", f"pdp_session={expired_session}")],
        "session idle": [("cookie", f"pdp_session={idle_session}")],
        "session revoked": [("cookie", f"pdp_session={revoked_session}")],
        "no credential": [],
    }


# case → (HTTP status, subject upstream / authn cause in the audit log, method)
CASES: dict[str, tuple[int, str, str]] = {
    "jwt ok": (200, "user:alice", "bearer"),
    "jwt expired": (401, "token_expired", "bearer"),
    "jwt not yet valid": (401, "token_not_yet_valid", "bearer"),
    "jwt wrong audience": (401, "wrong_audience", "bearer"),
    "jwt wrong issuer": (401, "wrong_issuer", "bearer"),
    "jwt bad signature": (401, "bad_signature", "bearer"),
    "jwt alg none": (401, "alg_not_allowed", "bearer"),
    "jwt unknown kid": (401, "unknown_kid", "bearer"),
    "jwt revoked jti": (401, "token_revoked", "bearer"),
    "apikey ok": (200, "service:billing", "apikey"),
    "apikey in bearer ok": (200, "service:billing", "apikey"),
    "apikey wrong secret": (401, "key_mismatch", "apikey"),
    "apikey unknown": (401, "key_unknown", "apikey"),
    "apikey expired": (401, "key_expired", "apikey"),
    "apikey revoked": (401, "key_revoked", "apikey"),
    "apikey rotated": (401, "key_rotated", "apikey"),
    "session ok": (200, "user:bob", "session"),
    "session expired": (401, "session_expired", "session"),
    "session idle": (401, "session_idle", "session"),
    "session revoked": (401, "session_revoked", "session"),
    "no credential": (401, "no_credential", ""),
}


@pytest.mark.parametrize("encoding", ["map", "raw"])
def test_each_resolver_allows_and_each_failure_is_a_generic_401_with_its_cause_audited(
    world: World, creds: dict[str, list[tuple[str, str]]], encoding: str
) -> None:
    wait_for(lambda: world.revocations.tokens(), what="the revocation")
    time.sleep(0.3)  # past the revocation list's refresh interval (0.1 s)
    answers: dict[str, tuple[int, dict[str, str], str]] = {}
    for name, headers in creds.items():
        status, hdrs, body, _ = world.check("GET", DOC, headers, encoding=encoding)
        answers[name] = (status, hdrs, body)
    records = world.records()
    for name, (want_status, want, method) in CASES.items():
        status, hdrs, body = answers[name]
        assert status == want_status, name
        rec = records[hdrs["x-pdp-decision-id"]]
        assert rec.authn is not None and rec.http is not None
        assert rec.http == {
            "method": "GET",
            "host": "docs.example.com",
            "path": DOC,
            "route": "documents.read",
            "status": want_status,
        }
        if want_status == 200:
            assert hdrs["x-pdp-subject"] == want and body == ""
            assert rec.allowed and rec.subject == want and rec.action == "read"
            assert rec.authn["result"] == "ok" and rec.authn["method"] == method
            assert rec.reasons[0].rule == "document.viewer-read"
        else:
            # The same answer whatever the cause: nothing says which part was wrong.
            assert body == UNAUTHORIZED_BODY, name
            assert set(hdrs) == {
                "content-type",
                "cache-control",
                "x-pdp-decision-id",
                "www-authenticate",
            }
            assert hdrs["www-authenticate"] == 'Bearer realm="pdp"'
            assert not rec.allowed and rec.authn["result"] == "failed"
            assert rec.authn["cause"] == want, name
            assert rec.authn.get("method", "") == method
            assert [d.code for d in rec.diagnostics] == ["unauthenticated"]
            assert rec.resource == "document/42"  # the route's resource, for searching
    # The responses of all failures are byte-identical but for the decision id.
    shapes = {
        json.dumps({k: v for k, v in h.items() if k != "x-pdp-decision-id"}, sort_keys=True) + b
        for s, h, b in answers.values()
        if s == 401
    }
    assert len(shapes) == 1


def test_allow_headers_remove_credentials_and_cannot_be_forged(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    forged = [*creds["jwt ok"], ("x-pdp-subject", "user:admin")]
    status, hdrs, _, resp = world.check("PUT", DOC, forged)
    assert status == 200 and hdrs["x-pdp-subject"] == "user:alice"
    assert sorted(resp.ok_response.headers_to_remove) == ["authorization", "x-api-key"]


def test_policy_denial_is_a_generic_403_and_the_rules_are_audited(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    # bob is a viewer: no update. The other tenant: tenant isolation.
    status, hdrs, body, _ = world.check("PUT", DOC, creds["session ok"])
    assert (status, body) == (403, FORBIDDEN_BODY)
    other = world.check("GET", "/tenants/globex/documents/1", creds["session ok"])
    assert (other[0], other[2]) == (403, FORBIDDEN_BODY)
    records = world.records()
    rec = records[hdrs["x-pdp-decision-id"]]
    assert rec.subject == "user:bob" and rec.action == "update" and not rec.reasons
    assert rec.authn == {"result": "ok", "method": "session", "credential": rec.authn["credential"]}
    rec = records[other[1]["x-pdp-decision-id"]]
    assert [r.rule for r in rec.reasons] == ["document.tenant-isolation"]


def test_unmatched_routes_and_bad_paths_are_403_after_authentication(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    no_route = world.check("DELETE", DOC, creds["apikey ok"])
    bad_path = world.check("GET", "/tenants/acme/documents/..%2f43", creds["apikey ok"])
    # Without a credential an unknown path is a 401 like any other: no route probing.
    anonymous = world.check("GET", "/nowhere", [])
    assert [x[0] for x in (no_route, bad_path, anonymous)] == [403, 403, 401]
    assert no_route[2] == bad_path[2] == FORBIDDEN_BODY
    records = world.records()
    rec = records[no_route[1]["x-pdp-decision-id"]]
    assert [d.code for d in rec.diagnostics] == ["no_route"]
    assert rec.subject == "service:billing" and rec.authn is not None
    assert rec.authn["result"] == "ok" and rec.http is not None and "route" not in rec.http
    rec = records[bad_path[1]["x-pdp-decision-id"]]
    assert [d.code for d in rec.diagnostics] == ["bad_path"]
    rec = records[anonymous[1]["x-pdp-decision-id"]]
    assert rec.authn == {"result": "failed", "cause": "no_credential"}


def test_an_internal_error_is_a_generic_403_and_on_record(
    world: World, creds: dict[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("pdp.envoy.authorize.EnvoyAuthorizer.check", broken)
    status, headers, body, resp = world.check("GET", DOC, creds["apikey ok"])
    assert (status, body) == (403, FORBIDDEN_BODY) and "secret" not in str(resp)
    rec = world.records()[headers["x-pdp-decision-id"]]
    assert not rec.allowed
    assert [(d.code, d.message) for d in rec.diagnostics] == [
        ("internal_error", "internal error: RuntimeError")
    ]


def test_anonymous_route_and_source_address_in_context(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    status, hdrs, _, resp = world.check("GET", "/healthz", [])
    assert status == 200 and "x-pdp-subject" in resp.ok_response.headers_to_remove
    rec = world.records()[hdrs["x-pdp-decision-id"]]
    assert rec.authn == {"result": "anonymous"} and rec.subject == "anonymous:anonymous"
    # `context.ip` is Envoy's source address: sharing from the office, not from outside.
    share = f"{DOC}/share"
    inside = world.check("POST", share, creds["jwt ok"], source="10.1.2.3")
    outside = world.check("POST", share, creds["jwt ok"], source="203.0.113.7")
    assert (inside[0], outside[0]) == (200, 403)
    rec = world.records()[outside[1]["x-pdp-decision-id"]]
    assert [r.rule for r in rec.reasons] == ["document.share-off-network"]


def test_ambiguous_credentials_are_refused(world: World) -> None:
    status, hdrs, body, _ = world.check(
        "GET", DOC, [("cookie", "pdp_session=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; pdp_session=b")]
    )
    assert (status, body) == (401, UNAUTHORIZED_BODY)
    rec = world.records()[hdrs["x-pdp-decision-id"]]
    assert rec.authn is not None and rec.authn["cause"] == "ambiguous_credentials"


def test_health_reports_the_envoy_service(world: World) -> None:
    stub = health_pb2_grpc.HealthStub(world.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=ENVOY_SERVICE), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


# --- pdp.v1 with a raw credential --------------------------------------------------------


def _check(world: World, credential: pb.Credential | None, **kw: Any) -> pb.CheckResponse:
    req = pb.CheckRequest(
        actions=[pb.Action(name="read"), pb.Action(name="update")],
        resource=pb.Resource(type="document", id="7"),
        **kw,
    )
    req.resource.properties.update({"tenant": "acme"})
    if credential is not None:
        req.credential.CopyFrom(credential)
    resp: pb.CheckResponse = world.pdp.Check(req, timeout=10)
    return resp


def test_pdp_v1_resolves_a_raw_credential_with_the_same_resolvers(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    key = creds["apikey ok"][0][1]
    ok = _check(world, pb.Credential(api_key=key))
    assert [d.decision for d in ok.decisions] == [True, False]
    tok = creds["jwt ok"][0][1].removeprefix("Bearer ")
    ok_jwt = _check(world, pb.Credential(bearer_token=tok))
    assert [d.decision for d in ok_jwt.decisions] == [True, True]  # alice is an editor
    failures = {
        "key_unknown": pb.Credential(api_key=creds["apikey unknown"][0][1]),
        "key_revoked": pb.Credential(api_key=creds["apikey revoked"][0][1]),
        "token_expired": pb.Credential(
            bearer_token=creds["jwt expired"][0][1].removeprefix("Bearer ")
        ),
        "session_unknown": pb.Credential(session_id="s" * 43),
        "no_credential": pb.Credential(),
    }
    answers = {cause: _check(world, c) for cause, c in failures.items()}
    records = world.records()
    rec = records[ok.decisions[0].decision_id]
    assert rec.subject == "service:billing" and rec.authn is not None
    assert rec.authn["method"] == "apikey" and rec.http is None
    for cause, resp in answers.items():
        diags = {(x.code, x.message) for d in resp.decisions for x in d.diagnostics}
        # The same generic diagnostic whatever the cause, and no decision allowed.
        assert diags == {("unauthenticated", "authentication required")}, cause
        assert not any(d.decision for d in resp.decisions)
        for d in resp.decisions:
            rec = records[d.decision_id]
            assert rec.authn is not None and rec.authn["cause"] == cause
            assert rec.subject_type == ""  # nobody was established
            # What was asked is still on record: the resource and the action.
            assert (rec.resource, rec.action) == ("document/7", d.action)


def test_pdp_v1_credential_and_subject_together_are_refused(world: World) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _check(world, pb.Credential(api_key="x"), subject=pb.Subject(type="user", id="alice"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (info.value.details() or "")


def test_pdp_v1_evaluations_and_list_actions_take_a_credential(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    key = creds["apikey ok"][0][1]
    req = pb.EvaluationsRequest(
        action=pb.Action(name="read"),
        evaluations=[
            pb.Evaluation(resource=pb.Resource(type="document", id="1")),
            pb.Evaluation(resource=pb.Resource(type="document", id="2")),
        ],
        credential=pb.Credential(api_key=key),
    )
    for ev in req.evaluations:
        ev.resource.properties.update({"tenant": "acme"})
    resp = world.pdp.Evaluations(req, timeout=10)
    assert [d.decision for d in resp.decisions] == [True, True]
    la = pb.ListActionsRequest(
        resource=pb.Resource(type="document", id="1"), credential=pb.Credential(api_key=key)
    )
    la.resource.properties.update({"tenant": "acme"})
    assert list(world.pdp.ListActions(la, timeout=10).allowed) == ["read"]
    # A failed credential is refused first: not even the resource type is judged.
    for rtype in ("document", "no_such_type"):
        bad = pb.ListActionsRequest(
            resource=pb.Resource(type=rtype, id="1"),
            credential=pb.Credential(api_key=creds["apikey unknown"][0][1]),
        )
        resp = world.pdp.ListActions(bad, timeout=10)
        assert not resp.allowed and not resp.diagnostics
        [d] = resp.decisions
        assert [(x.code, x.message) for x in d.diagnostics] == [
            ("unauthenticated", "authentication required")
        ]
        rec = world.records()[d.decision_id]
        assert rec.authn is not None and rec.authn["cause"] == "key_unknown"
        assert rec.resource == f"{rtype}/1"


# --- the review commands see the new sections -------------------------------------------


def test_audit_search_filters_and_show_displays_authentication(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    status, hdrs, _, _ = world.check("GET", DOC, [("x-api-key", "pdp_short")])
    assert status == 401
    page = JsonlSource(world.audit).search(make_filter(["authn.cause=key_malformed"]), 100)
    assert hdrs["x-pdp-decision-id"] in {r.decision_id for r in page.records}
    assert all(r.authn and r.authn["cause"] == "key_malformed" for r in page.records)
    capsys.readouterr()
    code = main(
        [
            "audit",
            "show",
            hdrs["x-pdp-decision-id"],
            "--log",
            str(world.audit),
            "--policies",
            str(world.policies),
        ]
    )
    text = " ".join(capsys.readouterr().out.split())  # the table may wrap long values
    assert code == 0
    assert "authentication failed (key_malformed), apikey" in text
    assert f"http request GET docs.example.com{DOC} → 401, route" in text
    assert "reasons -" in text  # not "default deny": no evaluation was made
    assert "not made by the policies (`unauthenticated`)" in text


# --- reloading the route table -------------------------------------------------------------


def test_a_bad_route_table_keeps_the_last_good_one(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    routes = world.policies / "routes.yaml"
    good = routes.read_text(encoding="utf-8")
    try:
        routes.write_text(good + "  - name: broken\n    path: nope\n", encoding="utf-8")

        def failed() -> pb.ServerInfoResponse | None:
            info = world.pdp.ServerInfo(pb.ServerInfoRequest(), timeout=5)
            return info if info.last_reload.what == "routes" and not info.last_reload.ok else None

        info = wait_for(failed, what="the failed route reload")
        assert any("routes[4].path" in e for e in info.last_reload.errors)
        assert world.check("GET", DOC, creds["jwt ok"])[0] == 200  # the last good table
        # A good table with a new route is picked up (and reported as a good reload).
        routes.write_text(good.replace("path: /healthz", "path: /health/live"), encoding="utf-8")
        wait_for(lambda: world.check("GET", "/health/live", [])[0] == 200, what="new routes")
        info = world.pdp.ServerInfo(pb.ServerInfoRequest(), timeout=5)
        assert info.last_reload.ok
    finally:
        routes.write_text(good, encoding="utf-8")
        wait_for(lambda: world.check("GET", "/healthz", [])[0] == 200, what="restored routes")


# --- no timing oracle through the server ---------------------------------------------------


def test_failures_do_the_same_store_work_whether_or_not_the_credential_exists(
    world: World, creds: dict[str, list[tuple[str, str]]]
) -> None:
    """Unknown key vs wrong secret, unknown session vs revoked one: one lookup each, and
    no write, so the store's timing tells nothing (the MAC and comparison are counted
    in tests/identity)."""
    from sqlalchemy import event

    store = world.server.identity.store
    assert isinstance(store, SqlStore)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement.split()[0].upper())

    for engine in store.engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        work: dict[str, list[str]] = {}
        for name in ("apikey unknown", "apikey wrong secret", "session revoked"):
            statements.clear()
            assert world.check("GET", DOC, creds[name])[0] == 401
            work[name] = list(statements)
        statements.clear()
        assert world.check("GET", DOC, [("cookie", "pdp_session=" + "z" * 43)])[0] == 401
        work["session unknown"] = list(statements)
    finally:
        for engine in store.engines:
            event.remove(engine, "before_cursor_execute", count)
    assert work["apikey unknown"] == work["apikey wrong secret"] == ["SELECT"]
    assert work["session unknown"] == work["session revoked"] == ["SELECT"]


def test_the_envoy_endpoint_is_not_serving_until_a_route_table_loads(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        f"sqlite:///{tmp_path / 'pdp.db'}",
        routes="routes: [oops]\n",
        flags={"audit.sink": "none", "envoy.enabled": True, "identity.sessions.enabled": True},
    )
    policies = tmp_path / "policies"
    server = PdpServer(cfg)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            req = health_pb2.HealthCheckRequest(service=service)
            return int(health.Check(req, timeout=5).status)

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status("") == serving  # pdp.v1 needs no routes
        assert status(ENVOY_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        envoy = external_auth_pb2_grpc.AuthorizationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            envoy.Check(check_request("GET", "/healthz"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        (policies / "routes.yaml").write_text(ROUTES, encoding="utf-8")
        wait_for(lambda: status(ENVOY_SERVICE) == serving, what="the Envoy endpoint serving")
        resp = envoy.Check(check_request("GET", "/healthz"), timeout=5)
        assert resp.HasField("ok_response")
    finally:
        channel.close()
        server.stop(0.5)


def test_a_credential_store_down_at_start_up_does_not_stop_the_server_and_fails_closed(
    tmp_path: Path,
) -> None:
    # The same as the role store: the server starts, and fails closed meanwhile.
    down = f"postgresql://pdp@127.0.0.1:{free_port()}/test"  # nothing listens there
    cfg = _config(
        tmp_path,
        down,
        flags={"audit.path": str(tmp_path / "audit"), "identity.apikeys.enabled": True},
    )
    server = PdpServer(cfg)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        pdp = pb_grpc.DecisionServiceStub(channel)
        req = pb.CheckRequest(
            actions=[pb.Action(name="read")],
            resource=pb.Resource(type="document", id="7"),
            credential=pb.Credential(api_key="pdp_abcdefgh1234_" + "s" * 43),  # well-formed
        )
        resp = pdp.Check(req, timeout=10)
        d = resp.decisions[0]
        assert not d.decision
        assert [(x.code, x.message) for x in d.diagnostics] == [
            ("unauthenticated", "authentication required")
        ]
        wait_for(
            lambda: d.decision_id in {r.decision_id for r in _all_records(tmp_path / "audit")},
            what="the record",
        )
        rec = next(r for r in _all_records(tmp_path / "audit") if r.decision_id == d.decision_id)
        assert rec.authn is not None and rec.authn["cause"] == "store_unavailable"
    finally:
        channel.close()
        server.stop(0.5)


def _all_records(directory: Path) -> list[DecisionRecord]:
    return JsonlSource(directory).search(Filter(), 1000).records


def test_an_envoy_deny_without_a_record_carries_no_decision_id(tmp_path: Path) -> None:
    from pdp.audit.sink import MemorySink

    sink = MemorySink()
    cfg = _config(
        tmp_path,
        f"sqlite:///{tmp_path / 'pdp.db'}",
        routes=ROUTES,
        flags={"envoy.enabled": True, "audit.durable_timeout": 2.0},
    )
    server = PdpServer(cfg, sink=sink)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        envoy = external_auth_pb2_grpc.AuthorizationStub(channel)
        ok = envoy.Check(check_request("GET", "/healthz"), timeout=5)
        assert ok.HasField("ok_response") and len(sink.records) == 1
        sink.fail_with = OSError("disk gone")
        resp = envoy.Check(check_request("GET", "/healthz"), timeout=5)
        assert resp.denied_response.status.code == 403
        headers = dict(header_values(resp))
        assert "x-pdp-decision-id" not in headers  # nothing holds it, so none is sent
        assert len(sink.records) == 1
    finally:
        channel.close()
        server.stop(0.5)


def test_a_slow_first_key_set_download_does_not_take_every_thread(tmp_path: Path) -> None:
    """Regression: before the key set first loaded, every bearer check queued behind the
    one fetch; an issuer trickling its key set a byte at a time (each read within the
    per-read timeout) held them for a minute, the 16 threads filled up, and API key
    checks timed out too. Now bearer checks are refused (`jwks_unavailable`) after a
    short wait and everything else is answered meanwhile."""
    stop = threading.Event()
    with serving(trickling(stop, 0.1)) as base:
        db = f"sqlite:///{tmp_path / 'pdp.db'}"
        cfg = _config(
            tmp_path,
            db,
            routes=ROUTES,
            flags={
                "audit.path": str(tmp_path / "audit"),
                "envoy.enabled": True,
                "identity.jwt.issuer": ISSUER,
                "identity.jwt.audiences": [AUDIENCE],
                "identity.jwt.algorithms": ["RS256"],
                "identity.jwt.jwks_url": f"{base}/jwks.json",
                "identity.apikeys.enabled": True,
            },
        )
        with SqlStore(db) as store:
            key = (
                ApiKeys(SqlApiKeys(store), KeyHasher(PEPPER.encode()))
                .create("service", "billing", now=now())
                .key
            )
        server = PdpServer(cfg)
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            envoy = external_auth_pb2_grpc.AuthorizationStub(channel)
            tok = bearer(jwt_now())
            pending = [
                envoy.Check.future(check_request("GET", DOC, tok), timeout=30) for _ in range(20)
            ]
            time.sleep(0.3)  # the bearer checks are in: one fetching, the others waiting
            began = time.monotonic()
            resp = envoy.Check(check_request("GET", DOC, [("x-api-key", key)]), timeout=5)
            assert resp.HasField("ok_response")  # answered, and allowed
            assert time.monotonic() - began < 3
            # Every bearer check but the one fetching is refused within a short wait.
            wait_for(lambda: sum(f.done() for f in pending) >= 19, timeout=5, what="refusals")
            refused = [f.result() for f in pending if f.done()]
            assert all(r.denied_response.status.code == 403 for r in refused)
            ids = {dict(header_values(r))["x-pdp-decision-id"] for r in refused}
            wait_for(lambda: ids <= {r.decision_id for r in _all_records(tmp_path / "audit")})
            causes = {
                r.authn["cause"]
                for r in _all_records(tmp_path / "audit")
                if r.decision_id in ids and r.authn is not None
            }
            assert causes == {"jwks_unavailable"}
        finally:
            stop.set()  # the download ends: the fetching check is answered too
            channel.close()
            server.stop(0.5)
