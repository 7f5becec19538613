"""`envoy.service.auth.v3.Authorization/Check`, served next to pdp.v1 on the same port.

The servicer is the one generated in the published Envoy protobufs (`xds-protos`);
the work is `pdp.envoy.authorize.EnvoyAuthorizer`: route, authenticate, decide. This
module adds what only a server has: the current serving snapshot (policies, roles
and the route table, swapped whole on reload), the authenticator built from the
`[identity]` settings, the audit log, and the failure policy:

- not ready (no policy set, role source or route table loaded yet): UNAVAILABLE,
  which Envoy with `failure_mode_allow: false` turns into a denial, and health says
  NOT_SERVING for this service;
- a caller whose certificate is not in `tls.allowed_callers`: PERMISSION_DENIED;
- anything unexpected: logged with its traceback and answered as the generic 403,
  never a traceback to the client;
- durable audit log that could not store the record: the generic 403 (an allow that
  cannot be recorded is not given).

Every answered check is recorded with its `authn` and `http` sections next to the
decision, the real cause of a refusal included; the client sees only the generic
body of `pdp.envoy.responses`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from envoy.service.auth.v3 import (  # type: ignore[import-untyped]
    external_auth_pb2,
    external_auth_pb2_grpc,
)

from pdp.audit.record import build_record
from pdp.audit.recorder import Recorder
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Request, Subject
from pdp.envoy.authorize import CheckOutcome, EnvoyAuthorizer, EnvoySettings
from pdp.envoy.responses import deny
from pdp.envoy.routes import RouteTable
from pdp.evaluation import as_seen, evaluate
from pdp.identity.result import Identity
from pdp.server.config import EnvoyConfig
from pdp.server.identity import ServerIdentity
from pdp.server.ids import new_decision_id
from pdp.server.service import caller_identities, caller_of
from pdp.server.state import ServingState, Snapshot

log = logging.getLogger("pdp.envoy")

SERVICE_NAME: str = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


def envoy_settings(cfg: EnvoyConfig, identity: ServerIdentity) -> EnvoySettings:
    """`[envoy]` and the credential locations → the authorizer's settings."""
    return EnvoySettings(
        credentials=identity.locations,
        remove_headers=cfg.remove_headers,
        subject_header=cfg.subject_header,
        decision_header=cfg.decision_header,
        realm=cfg.realm,
        context_headers=cfg.context_headers or None,
    )


class EnvoyService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Answers Envoy's Check from the serving state; add with `add_to(server)`."""

    def __init__(
        self,
        state: ServingState,
        identity: ServerIdentity,
        settings: EnvoySettings,
        *,
        recorder: Recorder | None = None,
        allowed_callers: frozenset[str] = frozenset(),
        tls: bool = False,
    ) -> None:
        self._state = state
        self._identity = identity
        self._settings = settings
        self._recorder = recorder
        self._allowed = allowed_callers
        self._tls = tls
        # One authorizer per route table: rebuilt only when a reload brings a new one.
        self._current: tuple[RouteTable, EnvoyAuthorizer] | None = None

    def add_to(self, server: grpc.Server | grpc.aio.Server) -> None:
        """Register Check; on a grpc.aio server it runs on the server's thread pool
        (route matching and credential lookups may block)."""
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self, server)

    def ready(self) -> bool:
        """Whether Check can be answered: policies, roles and a route table loaded."""
        snap = self._state.snapshot
        return snap is not None and snap.routes is not None

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """One Envoy check; never raises, never shows a traceback."""
        started = time.perf_counter_ns()
        snap = self._state.snapshot
        if snap is None or snap.routes is None:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("not serving yet: policies, role bindings or routes not loaded")
            return external_auth_pb2.CheckResponse()
        if self._allowed and not (caller_identities(context) & self._allowed):
            context.set_code(grpc.StatusCode.PERMISSION_DENIED)
            context.set_details("this caller's certificate is not in tls.allowed_callers")
            return external_auth_pb2.CheckResponse()
        decision_id = ""
        recorded = False
        seen: dict[int, Subject] = {}  # the subject as the engine saw it, for the record
        try:
            outcome = self._authorizer(snap.routes).check(
                request, _decider(snap, seen), datetime.now(UTC)
            )
            decision_id = outcome.decision_id
            if self._recorder is not None:
                recorded = True  # tried: a failure of the recorder is handled below
                why = self._record(snap, outcome, context, started, seen)
                if why is not None:
                    log.error(
                        "Envoy check %s denied: its audit record was not stored: %s",
                        decision_id,
                        why,
                    )
                    return deny(
                        403,
                        decision_id="",  # not recorded: no id to hand out
                        decision_header=self._settings.decision_header,
                    )
            return outcome.response
        except Exception as exc:
            decision_id = decision_id or new_decision_id()
            log.exception("internal error answering Envoy check %s", decision_id)
            if self._recorder is not None and not recorded:
                self._record_internal_error(snap, decision_id, exc, context, started)
            return deny(
                403, decision_id=decision_id, decision_header=self._settings.decision_header
            )

    def _record_internal_error(
        self,
        snap: Snapshot,
        decision_id: str,
        exc: Exception,
        context: grpc.ServicerContext,
        started: int,
    ) -> None:
        """The deny an internal error caused goes on record too, with its cause."""
        recorder = self._recorder
        assert recorder is not None
        diag = Diagnostic("internal_error", f"internal error: {type(exc).__name__}")
        try:
            record = build_record(
                Decision("", False, (), (diag,), snap.policy.version),
                None,
                decision_id=decision_id,
                caller=caller_of(context, self._tls),
                latency_us=(time.perf_counter_ns() - started) // 1000,
                policy=snap.policy,
                config=recorder.config,
                http={"status": 403},
            )
            recorder.record([record])
        except Exception:  # already answering a deny; the log has the first error
            log.exception("audit record of internal error %s failed", decision_id)

    def _authorizer(self, routes: RouteTable) -> EnvoyAuthorizer:
        current = self._current
        if current is not None and current[0] is routes:
            return current[1]
        authorizer = EnvoyAuthorizer(
            routes, self._identity.authenticator, self._settings, new_id=new_decision_id
        )
        self._current = (routes, authorizer)  # one reference assignment: thread-safe
        return authorizer

    def _record(
        self,
        snap: Snapshot,
        outcome: CheckOutcome,
        context: grpc.ServicerContext,
        started: int,
        seen: dict[int, Subject],
    ) -> str | None:
        """Build and hand over the check's record; why it could not be stored, if so."""
        recorder = self._recorder
        assert recorder is not None
        config = recorder.config
        request = outcome.request
        if request is not None and "subject" in config.include:
            subject = as_seen(request.subject, seen, snap.roles.source)
            request = Request(
                subject, request.action, request.resource, request.context, request.now
            )
        decision = outcome.decision
        if not decision.policy_version:
            # Refused before an evaluation: still say which policies were being served.
            decision = replace(decision, policy_version=snap.policy.version)
        authn = outcome.authn
        known_subject = (
            (authn.subject.type, authn.subject.id) if isinstance(authn, Identity) else None
        )
        known_resource = (
            (outcome.resource.type, outcome.resource.id) if outcome.resource is not None else None
        )
        http: dict[str, Any] = {"status": outcome.status}
        if outcome.http is not None:
            h = outcome.http
            http.update(method=h.method, host=h.host, path=h.path)
        if outcome.route is not None:
            http["route"] = outcome.route.name
        try:
            bindings_version = snap.roles.version()
        except Exception:  # a store that is down: the record is still worth having
            bindings_version = ""
        record = build_record(
            decision,
            request,
            decision_id=outcome.decision_id,
            caller=caller_of(context, self._tls),
            latency_us=(time.perf_counter_ns() - started) // 1000,
            bindings_version=bindings_version,
            policy=snap.policy,
            config=config,
            authn=authn.audit() if authn is not None else {"result": "anonymous"},
            http=http,
            known_subject=known_subject,
            known_resource=known_resource,
        )
        return recorder.record([record])  # never raises: a failure is a reason to deny


def _decider(snap: Snapshot, seen: dict[int, Subject]) -> Any:
    """The engine behind this snapshot, one request at a time (roles from the store);
    `seen` gets the subjects as the engine saw them (see `evaluate`)."""
    policy, source = snap.policy, snap.roles.source

    def decide(request: Request) -> Decision:
        return evaluate(policy, [request], source, now=request.now, seen=seen)[0]

    return decide
