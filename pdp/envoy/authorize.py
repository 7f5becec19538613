"""One Envoy `Check`: route, authenticate, then authorize — in that order, kept apart.

    CheckRequest ─► HttpRequest (either header encoding)
                 ─► route table: (resource, action), or no route
                 ─► credentials from headers/cookies ─► Authenticator ─► Identity | failure
                        failure                     → 401 (whatever the route);
                                                      403 if the failure is ours
                        no route                    → 403 (default deny)
                 ─► Request(subject, action, resource, context.http/source/...) ─► decide
                        allow → OK + x-pdp-subject, x-pdp-decision-id; deny → 403

The route is looked up first (it is pure and cheap, and an `authentication: optional`
route must be known before deciding whether a missing credential is a failure), but
authentication is judged before the route's absence: an unauthenticated client gets
401 for every path, so it cannot probe which routes exist.

This module does no I/O of its own and holds no state beyond its configuration:
`decide` (the engine behind the serving snapshot) and the resolvers' repositories are
handed in, so the server wires it on the same port as pdp.v1 and the tests drive it
with real Envoy messages and a real compiled policy set. Every outcome carries what
the audit log needs: the real cause (`token_expired`, `no_route`, the deciding
rules), which never reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.envoy.attributes import MAX_HEADERS, HttpRequest, from_check_request
from pdp.envoy.responses import DECISION_HEADER, SUBJECT_HEADER, allow, deny
from pdp.envoy.routes import NoMatch, Route, RouteMatch, RouteTable
from pdp.identity.http import CredentialLocations, credentials_from_headers
from pdp.identity.resolver import Authenticator
from pdp.identity.result import AuthnFailure, AuthnResult, Cause, CredentialKind, Identity

log = logging.getLogger("pdp.envoy")

Decide = Callable[[Request], Decision]

ANONYMOUS = Subject("anonymous", "anonymous")
OUR_FAILURES = frozenset({Cause.STORE_UNAVAILABLE, Cause.JWKS_UNAVAILABLE, Cause.INTERNAL_ERROR})
MAX_QUERY_PARAMS = 100


@dataclass(frozen=True, slots=True)
class EnvoySettings:
    """How HTTP requests become evaluations and answers. Immutable."""

    credentials: CredentialLocations = field(default_factory=CredentialLocations)
    # Credential headers the upstream should not see, removed on allow.
    remove_headers: tuple[str, ...] = ()
    subject_header: str = SUBJECT_HEADER
    decision_header: str = DECISION_HEADER
    realm: str = "pdp"
    # None: every header reaches `context.http.headers` except credentials; or an
    # allow-list of header names.
    context_headers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if '"' in self.realm or "\\" in self.realm or not self.realm.isprintable():
            raise ValueError("`realm` must be printable text without quotes or backslashes")
        if self.context_headers is not None:
            lowered = tuple(h.lower() for h in self.context_headers)
            object.__setattr__(self, "context_headers", lowered)
        for name in (self.subject_header, self.decision_header, *self.remove_headers):
            if not name or name != name.lower() or name.startswith(":") or " " in name:
                raise ValueError(f"`{name}`: header names are lower-case, without spaces")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The answer to one Check, and everything the audit log should keep about it.

    `decision` is always set: the engine's, or a deny whose diagnostic names why no
    evaluation was made (`unauthenticated`, `no_route`, `bad_path`, `bad_request`,
    `internal_error`). `request` is the evaluation, when one was made.
    """

    response: Any  # envoy.service.auth.v3.CheckResponse
    status: int  # the HTTP status Envoy applies: 200, 401 or 403
    decision_id: str
    decision: Decision
    http: HttpRequest | None = None
    route: Route | None = None
    authn: AuthnResult | None = None  # None: an anonymous route without a credential
    request: Request | None = None
    # The route's resource, also when the request was refused before an evaluation.
    resource: Resource | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def cause(self) -> str:
        """One word for the log: `allowed`, `denied`, an authentication cause, ..."""
        if isinstance(self.authn, AuthnFailure):
            return self.authn.cause.value
        if self.request is None:
            return self.decision.diagnostics[0].code if self.decision.diagnostics else "denied"
        return "allowed" if self.allowed else "denied"

    def audit(self) -> dict[str, Any]:
        """The Envoy-specific part of the audit record (`http` and `authn` sections)."""
        out: dict[str, Any] = {"status": self.status, "cause": self.cause}
        if self.http is not None:
            out["http"] = {"method": self.http.method, "host": self.http.host}
            out["http"]["path"] = self.http.path
        if self.route is not None:
            out["route"] = self.route.name
        out["authn"] = self.authn.audit() if self.authn is not None else {"result": "anonymous"}
        return out


class _BadRequest(Exception):
    pass


class EnvoyAuthorizer:
    """Answers `envoy.service.auth.v3.Authorization/Check` messages."""

    def __init__(
        self,
        routes: RouteTable,
        authenticator: Authenticator,
        settings: EnvoySettings | None = None,
        *,
        new_id: Callable[[], str],
    ) -> None:
        self._routes = routes
        self._authn = authenticator
        self._s = settings or EnvoySettings()
        self._new_id = new_id
        self._realm = self._s.realm if CredentialKind.BEARER in authenticator.kinds else None
        self._hidden = (
            self._s.credentials.sensitive_headers()
            | {h.lower() for h in self._s.remove_headers}
            | {self._s.subject_header, self._s.decision_header}
        )

    @property
    def routes(self) -> RouteTable:
        return self._routes

    def check(self, msg: Any, decide: Decide, now: datetime) -> CheckOutcome:
        """Route, authenticate and decide one `CheckRequest` at time `now`."""
        decision_id = self._new_id()
        try:
            http = from_check_request(msg)
        except Exception:
            log.exception("unreadable CheckRequest (decision %s)", decision_id)
            return self._refused(decision_id, 403, "internal_error", "", None)
        if http.too_many_headers:
            return self._refused(
                decision_id, 403, "bad_request", "", http, note=f"over {MAX_HEADERS} headers"
            )
        match = self._routes.match(http.method, http.host, http.path)
        route = match.route if isinstance(match, RouteMatch) else None
        resource = match.resource if isinstance(match, RouteMatch) else None
        action = route.action if route is not None else ""

        credentials = [
            c
            for c in credentials_from_headers(http.headers, self._s.credentials)
            if c.kind in self._authn.kinds
        ]
        authn: AuthnResult | None = None
        if route is not None and route.anonymous_ok and not credentials:
            subject = ANONYMOUS
        else:
            # A credential that was presented is always judged, on anonymous routes
            # too: a bad one is a 401, never a silent downgrade to anonymous.
            authn = self._authn.authenticate(credentials, now)
            if isinstance(authn, AuthnFailure):
                # Our failure, not the client's: a 401 would send every browser to log
                # in again during a database blip. 403 is what Envoy itself answers
                # when the PDP fails (`status_on_error`); the cause is in the log.
                status = 403 if authn.cause in OUR_FAILURES else 401
                return self._refused(
                    decision_id, status, "unauthenticated", action, http, route, authn, resource
                )
            subject = authn.subject

        if isinstance(match, NoMatch):
            return self._refused(decision_id, 403, match.cause, "", http, None, authn)
        try:
            context = self._context(http, match, authn)
        except _BadRequest as exc:
            return self._refused(
                decision_id, 403, "bad_request", action, http, route, authn, resource, exc
            )
        request = Request(subject, Action(match.route.action), match.resource, context, now)
        try:
            decision = decide(request)
        except Exception:
            log.exception("internal error deciding an Envoy check (decision %s)", decision_id)
            return self._refused(
                decision_id, 403, "internal_error", action, http, route, authn, resource
            )
        if decision.allowed:
            response = allow(
                subject_key=authn.subject.key if isinstance(authn, Identity) else None,
                decision_id=decision_id,
                remove_headers=self._s.remove_headers,
                subject_header=self._s.subject_header,
                decision_header=self._s.decision_header,
            )
            status = 200
        else:
            response = deny(403, decision_id=decision_id, decision_header=self._s.decision_header)
            status = 403
        return CheckOutcome(
            response, status, decision_id, decision, http, route, authn, request, match.resource
        )

    def _refused(
        self,
        decision_id: str,
        status: int,
        code: str,
        action: str,
        http: HttpRequest | None,
        route: Route | None = None,
        authn: AuthnResult | None = None,
        resource: Resource | None = None,
        note: object = None,
    ) -> CheckOutcome:
        """A denial made before (or instead of) an evaluation."""
        if isinstance(authn, AuthnFailure):
            message = f"authentication failed: {authn.cause.value}"
        else:
            message = {
                "no_route": "no route matches this request",
                "bad_path": "the request path was refused",
                "bad_request": f"the request was refused: {note}",
                "internal_error": "internal error; the server log has the details",
            }.get(code, code)
        decision = Decision(action, False, (), (Diagnostic(code, message),), "")
        response = deny(
            status,
            decision_id=decision_id,
            bearer_realm=self._realm,
            decision_header=self._s.decision_header,
        )
        return CheckOutcome(
            response, status, decision_id, decision, http, route, authn, None, resource
        )

    def _context(
        self, http: HttpRequest, match: RouteMatch, authn: AuthnResult | None
    ) -> dict[str, Any]:
        """`context.http`, `.source`, `.destination`, `.extensions`, `.authn`, `.ip`."""
        allow_list = self._s.context_headers
        headers = {
            k: ", ".join(v)
            for k, v in http.headers.items()
            if k not in self._hidden and (allow_list is None or k in allow_list)
        }
        try:
            pairs = parse_qsl(http.query, keep_blank_values=True, max_num_fields=MAX_QUERY_PARAMS)
        except ValueError:
            raise _BadRequest(f"more than {MAX_QUERY_PARAMS} query parameters") from None
        query: dict[str, Any] = {}
        for k, v in pairs:
            # A repeated parameter becomes a list, so a condition comparing it with a
            # string errs (fails closed) instead of seeing one of the values.
            if k in query:
                prev = query[k]
                query[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
            else:
                query[k] = v
        ctx: dict[str, Any] = {
            "http": {
                "method": http.method,
                "host": http.host,
                "path": http.path,
                "query": query,
                "headers": headers,
                "scheme": http.scheme,
                "route": match.route.name,
                "params": dict(match.params),
            },
            "source": http.source.context(),
            "destination": http.destination.context(),
            "extensions": dict(http.extensions),
            "authn": authn.context() if isinstance(authn, Identity) else {"method": "anonymous"},
        }
        if http.source.address:
            # The end user's address as the proxy saw it, under the name pdp.v1 callers
            # use (`context.ip`), so one rule such as `in_cidr(context.ip, ...)` holds
            # for direct calls and proxied requests alike.
            ctx["ip"] = http.source.address
        if http.protocol:
            ctx["http"]["protocol"] = http.protocol
        if http.sni:
            ctx["tls"] = {"sni": http.sni}
        return ctx


def header_values(response: Any) -> Mapping[str, str]:
    """The headers a CheckResponse sets (ok or denied), by name; for tests and logs."""
    which = "ok_response" if response.HasField("ok_response") else "denied_response"
    return {str(h.header.key): str(h.header.value) for h in getattr(response, which).headers}
