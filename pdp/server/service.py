"""The pdp.v1.DecisionService handlers: the hot path from bytes to decisions.

Handlers receive the raw request bytes (no deserializer is registered), so that a
malformed message is answered INVALID_ARGUMENT by us rather than INTERNAL by gRPC,
and the message size limit can name itself. Each call reads the serving snapshot
once, converts the message once (enforcing limits), evaluates through
`pdp.evaluation.evaluate`, and stamps every decision with a decision id and the
versions that made it.

Failure policy: a call over a limit or malformed gets INVALID_ARGUMENT naming the
field; an evaluation that cannot be decided on its own is a deny with a diagnostic;
anything unexpected is logged with its traceback and answered as a deny with an
`internal_error` diagnostic: the client never sees a traceback.

Audit: every decision's record is built after the engine decided and handed to the
`Recorder` before the answer goes out. In `durable` mode a call whose records could
not be stored is answered with denies carrying an `audit_unavailable` diagnostic.

Where a call runs (`inline`): on a `grpc.aio` server a call is answered on the event
loop itself, and a durable call awaits its record there without holding a thread: no
hand-off between threads on the hot path. A call that needs the database (a role
cache miss: `WouldBlock`) is answered again from the start on the thread pool, so a
slow query or an outage holds one thread, never the loop. With credentials to look up
(keys, sessions, JWKS) any call may wait, and the handlers are plain functions for a
thread-pool `grpc.Server` instead (see `pdp.server.app`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError, Message

from pdp import __version__
from pdp.audit.record import RecordDraft
from pdp.audit.recorder import Recorder
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.evaluation import as_seen, evaluate
from pdp.identity.resolver import Authenticator
from pdp.identity.result import (
    PUBLIC_MESSAGE,
    AuthnFailure,
    AuthnResult,
    Credential,
    CredentialKind,
    Identity,
)
from pdp.server.config import Limits
from pdp.server.convert import Converter, InputError, LimitError
from pdp.server.ids import new_decision_ids
from pdp.server.state import ReloadResult, ServingState, Snapshot
from pdp.store.blocking import WouldBlock
from pdp.store.errors import StoreError
from pdp.v1 import decision_pb2 as pb

log = logging.getLogger("pdp.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name

M = TypeVar("M", bound=Message)
# A call's response, and the drafts of its decisions' records (to be stored before the
# response goes out; none when the audit log is off).
Answer = tuple[M, Sequence[RecordDraft]]
_NONE: Sequence[RecordDraft] = ()

# Semantics of the Evaluations call: stop after a decision equal to this, or never.
_STOP_AFTER: dict[int, bool | None] = {
    pb.EVALUATIONS_SEMANTIC_UNSPECIFIED: None,
    pb.EXECUTE_ALL: None,
    pb.DENY_ON_FIRST_DENY: False,
    pb.PERMIT_ON_FIRST_PERMIT: True,
}


class _Rejected(Exception):
    """Ends a call with a gRPC status (INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class DecisionService:
    """Answers Check, Evaluations, ListActions and ServerInfo from a `ServingState`."""

    def __init__(
        self,
        state: ServingState,
        limits: Limits,
        *,
        recorder: Recorder | None = None,
        allowed_callers: frozenset[str] = frozenset(),
        started_at: datetime | None = None,
        tls: bool = False,
        authenticator: Authenticator | None = None,
        inline: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self._state = state
        # Coroutines answered on the event loop (calls that must wait go to `executor`),
        # or plain functions for a thread-pool server.
        self._inline = inline
        self._executor = executor
        self._limits = limits
        # For calls that pass a raw `credential` instead of a subject; None: refused.
        self._authn = authenticator
        self._conv = Converter(limits)
        # For requests within max_attributes_bytes in all (nearly every one): no
        # attribute can be over it, so its encoded size is not computed.
        self._conv_small = Converter(limits, small=True)
        # None when the audit log is off: then no records are built at all.
        self._recorder = recorder
        self._audit_denied_logged = 0.0
        # Without TLS there are no certificate identities to read (a saving per call).
        self._tls = tls
        self._allowed = allowed_callers
        self._started_at = started_at or datetime.now(UTC)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler: coroutines for a grpc.aio.Server when calls are answered
        on the event loop (`inline`), else plain functions for a thread-pool grpc.Server."""

        def method(
            fn: Callable[[bytes, grpc.ServicerContext], Answer[M]],
            out: type[M],
            fallback: Callable[[bytes], M] | None,
        ) -> grpc.RpcMethodHandler[bytes, M]:
            guarded = self._guarded(fn, out, fallback)
            call = self._on_loop(guarded) if self._inline else self._blocking(guarded)
            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=None,  # raw bytes: we parse, so we can say what is wrong
                response_serializer=out.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": method(self._check, pb.CheckResponse, self._check_failed),
                "Evaluations": method(
                    self._evaluations, pb.EvaluationsResponse, self._evaluations_failed
                ),
                "ListActions": method(
                    self._list_actions, pb.ListActionsResponse, self._list_actions_failed
                ),
                "ServerInfo": method(self._server_info, pb.ServerInfoResponse, None),
            },
        )

    def _on_loop(
        self, answer: Callable[[bytes, grpc.ServicerContext], Answer[M]]
    ) -> Callable[[bytes, grpc.ServicerContext], Awaitable[M]]:
        """The call answered on the event loop; a durable record is awaited, not waited."""
        recorder = self._recorder
        blocking = self._blocking(answer)

        async def call(raw: bytes, context: grpc.ServicerContext) -> M:
            try:
                response, drafts = answer(raw, context)
            except WouldBlock:
                # Nothing was recorded or answered yet: start again where waiting is fine,
                # with what the answer reads of the context read here, on the loop.
                detached = _Detached(context)
                loop = asyncio.get_running_loop()
                # Duck-typed: the answer uses no more of a context than `_Detached` has.
                stand_in = cast(grpc.ServicerContext, detached)
                response = await loop.run_in_executor(self._executor, blocking, raw, stand_in)
                detached.apply(context)
                return response
            if drafts and recorder is not None:
                failure = await recorder.record_async(drafts)
                if failure is not None:
                    self._unrecorded(response, failure)
            return response

        return call

    def _blocking(
        self, answer: Callable[[bytes, grpc.ServicerContext], Answer[M]]
    ) -> Callable[[bytes, grpc.ServicerContext], M]:
        """The call answered on a pool thread, to the end: a lookup that waits holds one
        thread, and a durable call waits there for its record."""
        recorder = self._recorder

        def blocking(raw: bytes, context: grpc.ServicerContext) -> M:
            response, drafts = answer(raw, context)
            if drafts and recorder is not None:
                failure = recorder.record(drafts)
                if failure is not None:
                    self._unrecorded(response, failure)
            return response

        return blocking

    def _guarded(
        self,
        fn: Callable[[bytes, grpc.ServicerContext], Answer[M]],
        out: type[M],
        fallback: Callable[[bytes], M] | None,
    ) -> Callable[[bytes, grpc.ServicerContext], Answer[M]]:
        """Caller check first; statuses for rejected calls; never a traceback outwards."""
        allowed = self._allowed

        def call(raw: bytes, context: grpc.ServicerContext) -> Answer[M]:
            try:
                if allowed and not (caller_identities(context) & allowed):
                    raise _Rejected(
                        grpc.StatusCode.PERMISSION_DENIED,
                        "this caller's certificate is not in tls.allowed_callers",
                    )
                return fn(raw, context)
            except WouldBlock:
                raise  # not an error: the call is answered again on the thread pool
            except _Rejected as rej:
                context.set_code(rej.code)
                context.set_details(rej.details)
                return out(), _NONE
            except Exception:
                # A bug of ours outside the decision step (which has its own net).
                log.exception("internal error in %s", fn.__name__.strip("_"))
                try:
                    if fallback is not None:
                        return fallback(raw), _NONE
                except Exception:
                    log.exception("internal error while answering an internal error")
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details("internal error; the server log has the details")
                return out(), _NONE

        return call

    def _check_failed(self, raw: bytes) -> pb.CheckResponse:
        msg = pb.CheckRequest.FromString(raw)
        version = self._version()
        return pb.CheckResponse(decisions=[_internal_error(version, a.name) for a in msg.actions])

    def _evaluations_failed(self, raw: bytes) -> pb.EvaluationsResponse:
        msg = pb.EvaluationsRequest.FromString(raw)
        version = self._version()
        out = [
            _internal_error(version, ev.action.name if ev.HasField("action") else msg.action.name)
            for ev in msg.evaluations
        ] or [_internal_error(version, msg.action.name)]  # a single evaluation (see above)
        return pb.EvaluationsResponse(
            decisions=out[:1] if _STOP_AFTER.get(msg.semantic) is False else out
        )

    def _list_actions_failed(self, raw: bytes) -> pb.ListActionsResponse:
        return pb.ListActionsResponse(
            policy_version=self._version(),
            diagnostics=[_diag("internal_error", "internal error; the server log has the details")],
        )

    def _version(self) -> str:
        snap = self._state.snapshot
        return snap.policy.version if snap else ""

    # --- the calls ----------------------------------------------------------------------

    def _check(self, raw: bytes, context: grpc.ServicerContext) -> Answer[pb.CheckResponse]:
        started = time.perf_counter_ns()
        snap = self._snapshot()
        msg = self._parse(raw, pb.CheckRequest)
        conv = self._converter(raw)
        n = len(msg.actions)
        try:
            if n == 0:
                raise LimitError("actions", "at least one action is required")
            if n > self._limits.max_batch:
                raise LimitError("actions", f"{n} actions, more than {self._limits.max_batch}")
            now = datetime.now(UTC)
            authn = self._authenticate(msg, msg.HasField("subject"), now)
            subject = (
                _try(conv.subject, msg.subject, "subject") if authn is None else _subject_of(authn)
            )
            resource = _try(conv.resource, msg.resource, "resource")
            attrs = conv.struct(msg.context, "context")
            items = [
                _combine(subject, _try(conv.action, a, f"actions[{i}]"), resource, attrs, "", now)
                for i, a in enumerate(msg.actions)
            ]
        except LimitError as exc:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if authn is not None:
            items = _with_authn(items, authn)
        response = pb.CheckResponse()
        drafts = self._decide(
            snap, items, None, context, started, response.decisions, _audit_of(authn)
        )
        return response, drafts

    def _evaluations(
        self, raw: bytes, context: grpc.ServicerContext
    ) -> Answer[pb.EvaluationsResponse]:
        started = time.perf_counter_ns()
        snap = self._snapshot()
        msg = self._parse(raw, pb.EvaluationsRequest)
        n = len(msg.evaluations)
        try:
            if msg.semantic not in _STOP_AFTER:
                raise LimitError("semantic", f"unknown evaluations semantic {msg.semantic}")
            if n > self._limits.max_batch:
                raise LimitError(
                    "evaluations", f"{n} evaluations, more than {self._limits.max_batch}"
                )
            # With a credential, no evaluation may name a subject of its own: the
            # credential is who asks, for the whole batch.
            own = msg.HasField("subject") or any(ev.HasField("subject") for ev in msg.evaluations)
            authn = self._authenticate(msg, own, datetime.now(UTC))
            items = self._batch_items(
                msg, self._converter(raw), None if authn is None else _subject_of(authn)
            )
        except LimitError as exc:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if authn is not None:
            items = _with_authn(items, authn)
        stop_after = _STOP_AFTER[msg.semantic]
        response = pb.EvaluationsResponse()
        drafts = self._decide(
            snap, items, stop_after, context, started, response.decisions, _audit_of(authn)
        )
        return response, drafts

    def _list_actions(
        self, raw: bytes, context: grpc.ServicerContext
    ) -> Answer[pb.ListActionsResponse]:
        started = time.perf_counter_ns()
        snap = self._snapshot()
        msg = self._parse(raw, pb.ListActionsRequest)
        conv = self._converter(raw)
        try:
            authn = self._authenticate(msg, msg.HasField("subject"), datetime.now(UTC))
            subject = (
                _try(conv.subject, msg.subject, "subject") if authn is None else _subject_of(authn)
            )
            resource = _try(conv.resource, msg.resource, "resource")
            attrs = conv.struct(msg.context, "context")
        except LimitError as exc:
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if isinstance(authn, Identity):
            attrs = {**attrs, "authn": authn.context()}
        response = pb.ListActionsResponse(policy_version=snap.policy.version)
        if isinstance(authn, AuthnFailure):
            # Refused before anything else: an unauthenticated caller learns nothing,
            # not even whether the resource type exists. One record says who failed.
            asked = (resource.type, resource.id) if isinstance(resource, Resource) else None
            refused: list[Request | _Invalid] = [
                _Invalid(PUBLIC_MESSAGE, "", "unauthenticated", asked)
            ]
            drafts = self._decide(
                snap, refused, None, context, started, response.decisions, _audit_of(authn)
            )
            return response, drafts
        for part in (subject, resource):
            if isinstance(part, InputError):
                response.diagnostics.append(_diag("invalid_request", str(part)))
                return response, _NONE
        assert isinstance(subject, Subject) and isinstance(resource, Resource)
        declared = snap.policy.actions.get(resource.type)
        if declared is None:
            message = f"resource type `{resource.type}` is not declared"
            response.diagnostics.append(_diag("unknown_resource_type", message))
            return response, _NONE
        now = datetime.now(UTC)
        items: list[Request | _Invalid] = [
            Request(subject, Action(a), resource, attrs, now) for a in declared
        ]
        drafts = self._decide(
            snap, items, None, context, started, response.decisions, _audit_of(authn)
        )
        decisions = response.decisions
        response.allowed.extend(d.action for d in decisions if d.decision)
        if decisions:
            response.bindings_version = decisions[0].bindings_version
        return response, drafts

    def _server_info(
        self, raw: bytes, context: grpc.ServicerContext
    ) -> Answer[pb.ServerInfoResponse]:
        self._parse(raw, pb.ServerInfoRequest)
        state = self._state
        snap = state.snapshot
        info = pb.ServerInfoResponse(
            build=pb.BuildInfo(
                version=__version__,
                python=sys.version.split()[0],
                grpc=grpc.__version__,
            ),
            pid=os.getpid(),
        )
        info.started_at.FromDatetime(self._started_at)
        if snap is not None:
            info.policy_version = snap.policy.version
            info.policy_files = snap.policy_files
            try:
                info.bindings_version = snap.roles.version()
            except Exception:  # a store that is down: the other fields are still useful
                log.warning("bindings version unavailable", exc_info=True)
        if self._recorder is not None:
            stats = self._recorder.stats()
            info.audit.CopyFrom(
                pb.AuditInfo(
                    sink=self._recorder.sink_kind,
                    mode=stats.mode,
                    chain=self._recorder.writer.chain,
                    healthy=stats.healthy,
                    written=stats.written,
                    lost=stats.lost,
                    rejected=stats.rejected,
                    sampled_out=stats.sampled_out,
                    pending=stats.pending,
                    last_error=stats.last_error,
                )
            )
        last = state.last_reload
        if last is not None:
            _reload_result(last, info.last_reload)
        for r in state.reloads:
            _reload_result(r, info.reloads.add())
        return info, _NONE

    # --- shared steps -------------------------------------------------------------------

    def _authenticate(self, msg: Any, has_subject: bool, now: datetime) -> AuthnResult | None:
        """The identity or failure of the call's raw `credential`; None without one.

        Uses the same authenticator as the Envoy endpoint, so the same work is done
        whether or not a key, session or user exists (no timing oracle).
        """
        if not msg.HasField("credential"):
            return None
        if has_subject:
            raise LimitError("credential", "give a subject or a credential, not both")
        if self._authn is None:
            raise _Rejected(
                grpc.StatusCode.FAILED_PRECONDITION,
                "credential: this PDP accepts no credentials (configure identity.jwt, "
                "identity.apikeys or identity.sessions)",
            )
        return self._authn.authenticate(_credentials(msg.credential), now)

    def _snapshot(self) -> Snapshot:
        snap = self._state.snapshot
        if snap is None:
            raise _Rejected(
                grpc.StatusCode.UNAVAILABLE,
                "no valid policy set or role source is loaded yet; ServerInfo.last_reload "
                "and the server log say why",
            )
        return snap

    def _converter(self, raw: bytes) -> Converter:
        """The converter for a request of `len(raw)` bytes (see Converter's `small`)."""
        return self._conv_small if len(raw) <= self._limits.max_attributes_bytes else self._conv

    def _parse(self, raw: bytes, cls: type[M]) -> M:
        if len(raw) > self._limits.max_message_bytes:
            raise _Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: {len(raw)} bytes, more than limits.max_message_bytes "
                f"({self._limits.max_message_bytes})",
            )
        try:
            return cls.FromString(raw)
        except (DecodeError, RecursionError):
            name = cls.DESCRIPTOR.full_name
            # protobuf says no more than this; these are the usual reasons.
            raise _Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: not a valid {name} message (corrupt bytes, a string that is "
                "not UTF-8, or attributes nested deeper than protobuf's 100 levels)",
            ) from None

    def _batch_items(
        self, msg: pb.EvaluationsRequest, conv: Converter, authenticated: Subject | None = None
    ) -> list[Request | _Invalid]:
        """Evaluations with defaults applied; limits raise, bad input becomes `_Invalid`.

        `authenticated`: the subject a raw credential established, for every evaluation.
        """
        # Defaults are converted once; their errors matter only to evaluations using them.
        d_subject = _try(conv.subject, msg.subject, "subject") if msg.HasField("subject") else None
        if authenticated is not None:
            d_subject = authenticated
        d_action = _try(conv.action, msg.action, "action") if msg.HasField("action") else None
        d_resource = (
            _try(conv.resource, msg.resource, "resource") if msg.HasField("resource") else None
        )
        d_context = conv.struct(msg.context, "context")
        now = datetime.now(UTC)
        items: list[Request | _Invalid] = []
        # A batch names few distinct actions many times ("which of these may I do"):
        # each action without properties is converted once. Only successes are kept,
        # so an error still names its own evaluation.
        actions: dict[str, Action] = {}
        for i, ev in enumerate(msg.evaluations):
            where = f"evaluations[{i}]"
            subject = (
                _try(conv.subject, ev.subject, where + ".subject")
                if ev.HasField("subject")
                else d_subject
            )
            if not ev.HasField("action"):
                action = d_action
            elif ev.action.HasField("properties"):
                action = _try(conv.action, ev.action, where + ".action")
            else:
                action = actions.get(ev.action.name)
                if action is None:
                    action = _try(conv.action, ev.action, where + ".action")
                    if isinstance(action, Action):
                        actions[action.name] = action
            resource = (
                _try(conv.resource, ev.resource, where + ".resource")
                if ev.HasField("resource")
                else d_resource
            )
            attrs = (
                conv.struct(ev.context, where + ".context") if ev.HasField("context") else d_context
            )
            items.append(_combine(subject, action, resource, attrs, where, now))
        if not msg.evaluations:
            # AuthZEN 1.0 §7.1: without evaluations the request is a single evaluation
            # of its defaults, not an empty batch (a caller reading decisions[0] must
            # find a decision, a deny naming what is missing at worst).
            items.append(_combine(d_subject, d_action, d_resource, d_context, "", now))
        return items

    def _decide(
        self,
        snap: Snapshot,
        items: Sequence[Request | _Invalid],
        stop_after: bool | None,
        context: grpc.ServicerContext,
        started: int,
        into: RepeatedCompositeFieldContainer[pb.Decision],
        authn: Mapping[str, Any] | None = None,
    ) -> Sequence[RecordDraft]:
        """Decide `items` in order into the response's `decisions` (`into`); `_Invalid`
        ones are denies; stop after `stop_after`. Returns the drafts of their records.

        Each decision is added in place (`into.add`): building a `pb.Decision` and then
        copying it into the response cost about twice as much per decision (measured).
        `authn` is the audit log's authentication section, for calls with a credential.
        """
        policy, roles = snap.policy, snap.roles
        decisions: list[Decision] = []
        bindings_version = ""
        # The subjects as the engine saw them, for the records (not read a second time).
        seen: dict[int, Subject] | None = {} if self._recorder is not None else None
        try:
            bindings_version = roles.version()
            requests = [it for it in items if isinstance(it, Request)]
            if stop_after is None and len(requests) == len(items) and requests:
                # The common case: one evaluate() call, which shares role lookups.
                decisions = evaluate(policy, requests, roles.source, now=requests[0].now, seen=seen)
            else:
                for it in items:
                    if isinstance(it, _Invalid):
                        d = _deny(policy.version, it.action, it.code, it.message)
                    else:
                        d = evaluate(policy, [it], roles.source, now=it.now, seen=seen)[0]
                    decisions.append(d)
                    if d.allowed is stop_after:
                        break
        except WouldBlock:
            raise  # see _on_loop
        except StoreError as exc:
            log.warning("role source failed: %s", exc)
            decisions = [
                _deny(policy.version, _action_of(it), exc.code, f"role bindings: {exc.message}")
                for it in items
            ]
            if stop_after is False:
                decisions = decisions[:1]
            ids = new_decision_ids(len(decisions))
        except Exception:
            # Denies like any other, recorded like any other (with the cause), so that
            # every decision id a caller holds is in the audit log.
            decisions = [
                _deny(policy.version, _action_of(it), "internal_error", INTERNAL_ERROR)
                for it in items
            ]
            if stop_after is False:
                decisions = decisions[:1]
            ids = new_decision_ids(len(decisions))
            log.exception("internal error answering decisions %s", ", ".join(ids))
        else:
            ids = new_decision_ids(len(decisions))
        drafts = (
            _NONE
            if self._recorder is None
            else self._drafts(
                snap, items, decisions, ids, bindings_version, context, started, authn, seen
            )
        )
        add = into.add
        for d, i in zip(decisions, ids, strict=True):
            if not d.diagnostics:
                add(
                    decision=d.allowed,
                    action=d.action,
                    reasons=d.reasons,
                    decision_id=i,
                    policy_version=d.policy_version,
                    # The store's revision the roles were read at, when the source knows it.
                    bindings_version=d.bindings_version or bindings_version,
                )
            else:
                # Only when there are some: even an empty `diagnostics=[]` argument costs
                # more than the rest of the message (measured: 1.4 µs of 2.5 per decision).
                add(
                    decision=d.allowed,
                    action=d.action,
                    reasons=d.reasons,
                    diagnostics=[_diag(x.code, x.message, x.rule_id) for x in d.diagnostics],
                    decision_id=i,
                    policy_version=d.policy_version,
                    bindings_version=d.bindings_version or bindings_version,
                )
        return drafts

    def _drafts(
        self,
        snap: Snapshot,
        items: Sequence[Request | _Invalid],
        decisions: Sequence[Decision],
        ids: Sequence[str],
        bindings_version: str,
        context: grpc.ServicerContext,
        started: int,
        authn: Mapping[str, Any] | None = None,
        seen: dict[int, Subject] | None = None,
    ) -> list[RecordDraft]:
        """The drafts of the call's records (the writer builds each record from its draft).

        `seen`: the subjects as the engine saw them (see `evaluate`), by `id()`.
        """
        recorder = self._recorder
        assert recorder is not None
        config = recorder.config
        caller = caller_of(context, self._tls)
        latency = (time.perf_counter_ns() - started) // 1000
        with_subject = "subject" in config.include
        enriched = seen if seen is not None else {}  # by identity: items share their subject
        # Drafts: the writer builds each record once, in its place in the chain.
        records: list[RecordDraft] = []
        # INVARIANT: `decisions` is a prefix of `items` (a batch may stop early).
        for it, d, decision_id in zip(items, decisions, ids, strict=False):
            req = it if isinstance(it, Request) else None
            if req is not None and with_subject:
                subject = as_seen(req.subject, enriched, snap.roles.source)
                req = Request(subject, req.action, req.resource, req.context, req.now)
            records.append(
                RecordDraft(
                    d,
                    req,
                    {
                        "decision_id": decision_id,
                        "caller": caller,
                        "latency_us": latency,
                        "bindings_version": bindings_version,
                        "policy": snap.policy,
                        "config": config,
                        "authn": authn,
                        "known_resource": it.resource if isinstance(it, _Invalid) else None,
                        "known_subject": it.subject if isinstance(it, _Invalid) else None,
                    },
                )
            )
        return records

    def _unrecorded(self, response: Message, why: str) -> None:
        """Durable mode, records not stored: every decision of the call becomes a deny.

        Without a record a decision carries no decision id: an id promises one.
        """
        decisions: Sequence[pb.Decision] = response.decisions  # type: ignore[attr-defined]
        ids = [d.decision_id for d in decisions]
        now = time.monotonic()
        if now - self._audit_denied_logged > 1.0:  # at most once a second under load
            self._audit_denied_logged = now
            shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            log.error("decisions %s denied: their audit records were not stored: %s", shown, why)
        for d in decisions:
            d.decision = False
            d.decision_id = ""
            del d.reasons[:]
            del d.diagnostics[:]
            d.diagnostics.append(_diag("audit_unavailable", UNRECORDED))
        if isinstance(response, pb.ListActionsResponse):
            del response.allowed[:]


UNRECORDED = "the decision could not be recorded in the audit log, so it is denied"


class _Detached:
    """The context of a call on the loop, as its answer on a pool thread uses it.

    A `grpc.aio` context belongs to the loop's thread: read from a pool thread once
    the call had ended (the client's deadline passed meanwhile), gRPC crashed the whole
    process (SIGSEGV). So the peer and the certificate identities are read on the
    loop first, and a status the answer sets is applied there afterwards.
    """

    __slots__ = ("_peer", "_auth", "_code", "_details")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._peer = context.peer()
        self._auth = context.auth_context()
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Mapping[str, bytes]:  # as grpc's stubs type it
        return self._auth

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def apply(self, context: grpc.ServicerContext) -> None:
        """Set on the real context (on the loop) the status the answer set here."""
        if self._code is not None:
            context.set_code(self._code)
        if self._details is not None:
            context.set_details(self._details)


def caller_of(context: grpc.ServicerContext, tls: bool) -> str:
    """Who asked, for the audit log: the client certificate's identities, else the peer's
    address without its port (a new one per connection, so no use to a search)."""
    ids = caller_identities(context) if tls else ()
    return ",".join(sorted(ids)) or peer_address(context.peer())


@lru_cache(maxsize=4096)  # once per connection, not per call: peers keep their channels
def peer_address(peer: str) -> str:
    """gRPC's peer string without the port: `ipv4:10.0.0.5:51234` → `ipv4:10.0.0.5`,
    `ipv6:[::1]:51234` (or its %5B...%5D form) → `ipv6:[::1]`; others as they are."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return f"{kind}:{host.replace('%5B', '[').replace('%5D', ']')}"


def caller_identities(context: grpc.ServicerContext) -> frozenset[str]:
    """The client certificate's identities: its SANs (DNS, URI, ...) and its CN."""
    auth = context.auth_context()
    names = [
        *auth.get("x509_subject_alternative_name", ()),
        *auth.get("x509_common_name", ()),
    ]
    return frozenset(n.decode("utf-8", "replace") for n in names)


T = TypeVar("T")


def _try(convert: Callable[[M, str], T], msg: M, where: str) -> T | InputError:
    try:
        return convert(msg, where)
    except InputError as exc:
        return exc


@dataclass(frozen=True, slots=True)
class _Invalid:
    """An evaluation that cannot be decided: it is answered as a deny with a diagnostic."""

    message: str
    action: str
    code: str = "invalid_request"
    # (type, id) of the resource asked about, when known: the audit record names it.
    resource: tuple[str, str] | None = None
    # (type, id) of the subject, when it was valid: the record names who asked for what.
    subject: tuple[str, str] | None = None


_CREDENTIAL_KINDS = {
    "bearer_token": CredentialKind.BEARER,
    "api_key": CredentialKind.API_KEY,
    "session_id": CredentialKind.SESSION,
}


def _credentials(msg: pb.Credential) -> list[Credential]:
    """The raw credential of a pdp.v1 call (none when the oneof is unset)."""
    which = msg.WhichOneof("value")
    if which is None:
        return []
    return [Credential(_CREDENTIAL_KINDS[which], getattr(msg, which))]


def _subject_of(authn: AuthnResult) -> Subject:
    # A failed credential's evaluations are all refused by `_with_authn`; the
    # placeholder subject only lets them be built (their actions named) first.
    return authn.subject if isinstance(authn, Identity) else _NOBODY


_NOBODY = Subject("anonymous", "anonymous")


def _with_authn(
    items: Sequence[Request | _Invalid], authn: AuthnResult
) -> list[Request | _Invalid]:
    """Items of a call with a credential: `context.authn` set, or all refused on failure.

    A failure gives every item the same generic message whatever its cause (which
    only the audit log gets), so the caller learns nothing about keys or users.
    """
    if isinstance(authn, AuthnFailure):
        return [
            _Invalid(
                PUBLIC_MESSAGE,
                _action_of(it),
                "unauthenticated",
                (it.resource.type, it.resource.id) if isinstance(it, Request) else it.resource,
            )
            for it in items
        ]
    ctx = authn.context()
    return [
        Request(it.subject, it.action, it.resource, {**it.context, "authn": ctx}, it.now)
        if isinstance(it, Request)
        else it
        for it in items
    ]


def _audit_of(authn: AuthnResult | None) -> Mapping[str, Any] | None:
    return authn.audit() if authn is not None else None


def _combine(
    subject: Subject | InputError | None,
    action: Action | InputError | None,
    resource: Resource | InputError | None,
    attrs: Mapping[str, Any],
    where: str,
    now: datetime,
) -> Request | _Invalid:
    """The request, or why it cannot be decided. `now` is set here, once per call."""
    if type(subject) is Subject and type(action) is Action and type(resource) is Resource:
        return Request(subject, action, resource, attrs, now)  # every check: nothing else
    name = action.name if isinstance(action, Action) else ""
    parts = (("subject", subject), ("action", action), ("resource", resource))
    # What was valid still names the record, so a search by subject or resource finds it.
    who = (subject.type, subject.id) if isinstance(subject, Subject) else _entity(subject)
    what = (resource.type, resource.id) if isinstance(resource, Resource) else _entity(resource)
    for key, part in parts:
        if part is None:
            message = f"`{_join(where, key)}` is required (here or as a default)"
            return _Invalid(message, name, resource=what, subject=who)
    # Not all valid and none missing: one of them is an InputError.
    bad = next(part for _, part in parts if isinstance(part, InputError))
    return _Invalid(str(bad), name, resource=what, subject=who)


def _entity(part: object) -> tuple[str, str] | None:
    return part.entity if isinstance(part, InputError) else None


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _reload_result(r: ReloadResult, into: pb.ReloadResult) -> None:
    into.ok = r.ok
    into.at.FromDatetime(r.at)
    into.policy_version = r.policy_version
    into.errors.extend(r.errors)
    into.what = r.what
    into.bindings_version = r.bindings_version


def _diag(code: str, message: str, rule_id: str | None = None) -> pb.Diagnostic:
    return pb.Diagnostic(code=code, message=message, rule_id=rule_id or "")


def _deny(version: str, action: str, code: str, message: str) -> Decision:
    return Decision(action, False, (), (Diagnostic(code, message),), version)


INTERNAL_ERROR = "internal error; the server log has the details"


def _internal_error(version: str, action: str) -> pb.Decision:
    # No decision id: this answer comes from outside the decision step, where nothing
    # is recorded, and an id promises a record.
    return pb.Decision(
        decision=False,
        action=action,
        diagnostics=[_diag("internal_error", INTERNAL_ERROR)],
        policy_version=version,
    )


def _action_of(item: Request | _Invalid) -> str:
    return item.action.name if isinstance(item, Request) else item.action
