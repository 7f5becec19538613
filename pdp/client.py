"""A small client for the PDP's gRPC decision service, sync and asyncio.

    from pdp.client import PdpClient

    with PdpClient("127.0.0.1:50051") as pdp:
        d = pdp.check(
            {"type": "user", "id": "alice"},
            "read",
            {"type": "document", "id": "42", "properties": {"tenant": "acme"}},
        )
        if d.allowed: ...

Subjects, resources, actions and context are AuthZEN-shaped plain dicts (an action
may be just its name). Every call has a deadline (1 s unless told otherwise); a
failed call raises `PdpError` with the gRPC status code name and the server's
message. A deny is a decision, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from pdp.v1 import decision_pb2 as pb
from pdp.v1 import decision_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 1.0

SEMANTICS = {
    "execute_all": pb.EXECUTE_ALL,
    "deny_on_first_deny": pb.DENY_ON_FIRST_DENY,
    "permit_on_first_permit": pb.PERMIT_ON_FIRST_PERMIT,
}

# A mapping in the AuthZEN shape ({"type", "id", "properties"[, "ancestors"]}), or the
# short text form the rest of pdp uses: "user:alice" for a subject, "document/42" for a
# resource.
Entity = Mapping[str, Any] | str


class PdpError(Exception):
    """A call that failed (not a deny): `code` is the gRPC status name."""

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    rule_id: str


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision as the server made it."""

    allowed: bool
    action: str
    reasons: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...]
    decision_id: str
    policy_version: str
    bindings_version: str


@dataclass(frozen=True, slots=True)
class ActionList:
    """The answer of `list_actions`: what is allowed, and every declared action's decision."""

    allowed: tuple[str, ...]
    decisions: tuple[Decision, ...]
    diagnostics: tuple[Diagnostic, ...]
    policy_version: str
    bindings_version: str


# --- messages ---------------------------------------------------------------------------


def subject_pb(subject: Entity) -> pb.Subject:
    if isinstance(subject, str):
        kind, ident = _split(subject, ":", "subject", "user:alice")
        return pb.Subject(type=kind, id=ident)
    msg = pb.Subject(type=str(subject.get("type", "")), id=str(subject.get("id", "")))
    if subject.get("properties"):
        msg.properties.update(subject["properties"])
    return msg


def resource_pb(resource: Entity) -> pb.Resource:
    if isinstance(resource, str):
        kind, ident = _split(resource, "/", "resource", "document/42")
        return pb.Resource(type=kind, id=ident)
    msg = pb.Resource(type=str(resource.get("type", "")), id=str(resource.get("id", "")))
    if resource.get("properties"):
        msg.properties.update(resource["properties"])
    msg.ancestors.extend(resource.get("ancestors") or ())
    return msg


def _split(text: str, sep: str, what: str, example: str) -> tuple[str, str]:
    kind, found, ident = text.partition(sep)
    if not (found and kind and ident):
        raise ValueError(f"{what} {text!r}: write `type{sep}id`, e.g. {example!r}, or a mapping")
    return kind, ident


def action_pb(action: str | Entity) -> pb.Action:
    if isinstance(action, str):
        return pb.Action(name=action)
    msg = pb.Action(name=str(action.get("name", "")))
    if action.get("properties"):
        msg.properties.update(action["properties"])
    return msg


def check_request(
    subject: Entity,
    actions: Sequence[str | Entity],
    resource: Entity,
    context: Mapping[str, Any] | None = None,
) -> pb.CheckRequest:
    msg = pb.CheckRequest(
        subject=subject_pb(subject),
        actions=[action_pb(a) for a in actions],
        resource=resource_pb(resource),
    )
    if context:
        msg.context.update(context)
    return msg


def evaluations_request(
    evaluations: Sequence[Mapping[str, Any]],
    *,
    subject: Entity | None = None,
    action: str | Entity | None = None,
    resource: Entity | None = None,
    context: Mapping[str, Any] | None = None,
    semantic: str = "execute_all",
) -> pb.EvaluationsRequest:
    """An AuthZEN evaluations request: `evaluations` items override the defaults."""
    if semantic not in SEMANTICS:
        raise ValueError(f"semantic must be one of {', '.join(SEMANTICS)}")
    msg = pb.EvaluationsRequest(semantic=SEMANTICS[semantic])
    if subject is not None:
        msg.subject.CopyFrom(subject_pb(subject))
    if action is not None:
        msg.action.CopyFrom(action_pb(action))
    if resource is not None:
        msg.resource.CopyFrom(resource_pb(resource))
    if context is not None:
        msg.context.update(context)
    for item in evaluations:
        ev = msg.evaluations.add()
        if "subject" in item:
            ev.subject.CopyFrom(subject_pb(item["subject"]))
        if "action" in item:
            ev.action.CopyFrom(action_pb(item["action"]))
        if "resource" in item:
            ev.resource.CopyFrom(resource_pb(item["resource"]))
        if "context" in item:
            ev.context.update(item["context"])
    return msg


def list_actions_request(
    subject: Entity, resource: Entity, context: Mapping[str, Any] | None = None
) -> pb.ListActionsRequest:
    msg = pb.ListActionsRequest(subject=subject_pb(subject), resource=resource_pb(resource))
    if context:
        msg.context.update(context)
    return msg


def _diagnostics(items: Sequence[pb.Diagnostic]) -> tuple[Diagnostic, ...]:
    return tuple(Diagnostic(d.code, d.message, d.rule_id) for d in items)


def decision_of(d: pb.Decision) -> Decision:
    return Decision(
        allowed=d.decision,
        action=d.action,
        reasons=tuple(d.reasons),
        diagnostics=_diagnostics(d.diagnostics),
        decision_id=d.decision_id,
        policy_version=d.policy_version,
        bindings_version=d.bindings_version,
    )


def _action_list(r: pb.ListActionsResponse) -> ActionList:
    return ActionList(
        allowed=tuple(r.allowed),
        decisions=tuple(decision_of(d) for d in r.decisions),
        diagnostics=_diagnostics(r.diagnostics),
        policy_version=r.policy_version,
        bindings_version=r.bindings_version,
    )


def _error(exc: grpc.RpcError) -> PdpError:
    # The asyncio client's errors are `AioRpcError`s, which are no `grpc.Call`.
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details()
    else:
        code, details = None, str(exc)
    return PdpError(code.name if code else "UNKNOWN", details or "")


# --- channels ---------------------------------------------------------------------------


def _bytes(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def credentials(
    ca: str | Path | bytes | None = None,
    cert: str | Path | bytes | None = None,
    key: str | Path | bytes | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials: `ca` to trust the server (system roots when None); `cert` and
    `key` (PEM files or bytes) for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_bytes(ca), private_key=_bytes(key), certificate_chain=_bytes(cert)
    )


def _options(server_name: str | None) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


class PdpClient:
    """A blocking client; one channel, safe to share between threads."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """Plaintext unless `credentials` (see `pdp.client.credentials`) are given."""
        self.timeout = timeout
        opts = _options(server_name)
        self.channel = (
            grpc.secure_channel(target, credentials, opts)
            if credentials is not None
            else grpc.insecure_channel(target, opts)
        )
        self._stub = pb_grpc.DecisionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def check(
        self,
        subject: Entity,
        action: str | Entity,
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Decision:
        """May `subject` do `action` on `resource`?"""
        return self.check_actions(subject, [action], resource, context, timeout=timeout)[0]

    def check_actions(
        self,
        subject: Entity,
        actions: Sequence[str | Entity],
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[Decision]:
        """One decision per action, in order."""
        req = check_request(subject, actions, resource, context)
        try:
            resp = self._stub.Check(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return [decision_of(d) for d in resp.decisions]

    def evaluations(
        self,
        evaluations: Sequence[Mapping[str, Any]],
        *,
        subject: Entity | None = None,
        action: str | Entity | None = None,
        resource: Entity | None = None,
        context: Mapping[str, Any] | None = None,
        semantic: str = "execute_all",
        timeout: float | None = None,
    ) -> list[Decision]:
        """A batch with shared defaults; decisions in request order (see `semantic`)."""
        req = evaluations_request(
            evaluations,
            subject=subject,
            action=action,
            resource=resource,
            context=context,
            semantic=semantic,
        )
        try:
            resp = self._stub.Evaluations(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return [decision_of(d) for d in resp.decisions]

    def list_actions(
        self,
        subject: Entity,
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> ActionList:
        """The actions `subject` may take on `resource`."""
        try:
            resp = self._stub.ListActions(
                list_actions_request(subject, resource, context), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _action_list(resp)

    def server_info(self, *, timeout: float | None = None) -> pb.ServerInfoResponse:
        """Versions, build and the last reload result of the server that answers."""
        try:
            resp: pb.ServerInfoResponse = self._stub.ServerInfo(
                pb.ServerInfoRequest(), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return resp


class AsyncPdpClient:
    """The asyncio twin of `PdpClient`: same methods, awaited."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        self.timeout = timeout
        opts = _options(server_name)
        self.channel = (
            grpc.aio.secure_channel(target, credentials, opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, opts)
        )
        # With an aio channel the generated stub is the asyncio one (typed so by its .pyi).
        self._stub = pb_grpc.DecisionServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def check(
        self,
        subject: Entity,
        action: str | Entity,
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Decision:
        """May `subject` do `action` on `resource`?"""
        decisions = await self.check_actions(subject, [action], resource, context, timeout=timeout)
        return decisions[0]

    async def check_actions(
        self,
        subject: Entity,
        actions: Sequence[str | Entity],
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[Decision]:
        req = check_request(subject, actions, resource, context)
        try:
            resp = await self._stub.Check(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return [decision_of(d) for d in resp.decisions]

    async def evaluations(
        self,
        evaluations: Sequence[Mapping[str, Any]],
        *,
        subject: Entity | None = None,
        action: str | Entity | None = None,
        resource: Entity | None = None,
        context: Mapping[str, Any] | None = None,
        semantic: str = "execute_all",
        timeout: float | None = None,
    ) -> list[Decision]:
        req = evaluations_request(
            evaluations,
            subject=subject,
            action=action,
            resource=resource,
            context=context,
            semantic=semantic,
        )
        try:
            resp = await self._stub.Evaluations(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return [decision_of(d) for d in resp.decisions]

    async def list_actions(
        self,
        subject: Entity,
        resource: Entity,
        context: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> ActionList:
        try:
            resp = await self._stub.ListActions(
                list_actions_request(subject, resource, context), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _action_list(resp)

    async def server_info(self, *, timeout: float | None = None) -> pb.ServerInfoResponse:
        try:
            resp: pb.ServerInfoResponse = await self._stub.ServerInfo(
                pb.ServerInfoRequest(), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return resp
