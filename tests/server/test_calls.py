"""Every call of pdp.v1.DecisionService through the real server and the real client."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pdp.client import AsyncPdpClient, PdpClient, PdpError
from tests.server.support import (
    ALICE,
    BOB,
    DOC,
    LOCKED,
    MALLORY,
    NOTE,
    Running,
    free_port,
    health_status,
)

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_check_allows_with_reasons_and_versions(client: PdpClient) -> None:
    d = client.check(ALICE, "read", DOC)
    assert d.allowed
    assert d.action == "read"
    assert d.reasons == ("doc.viewer-read",)
    assert d.diagnostics == ()
    assert UUID7.match(d.decision_id)
    info = client.server_info()
    assert d.policy_version == info.policy_version
    assert d.policy_version.startswith("sha256:")
    assert d.bindings_version == info.bindings_version != ""


def test_check_several_actions_in_order(client: PdpClient) -> None:
    ds = client.check_actions(BOB, ["delete", "read", "write"], DOC)
    assert [(d.action, d.allowed) for d in ds] == [
        ("delete", False),
        ("read", True),
        ("write", True),
    ]
    assert ds[0].reasons == ()  # a default deny names no rule
    assert len({d.decision_id for d in ds}) == 3


def test_forbid_overrides_and_names_the_rule(client: PdpClient) -> None:
    d = client.check(BOB, "write", LOCKED)
    assert not d.allowed
    assert d.reasons == ("doc.locked",)
    # Stored attributes win: mallory's tenant is globex whatever she claims.
    claim = {**MALLORY, "properties": {"tenant": "acme"}}
    d = client.check(claim, "read", DOC)
    assert not d.allowed and d.reasons == ("doc.tenant",)


def test_derived_role_from_attributes(client: PdpClient) -> None:
    carol = {"type": "user", "id": "carol", "properties": {"tenant": "acme"}}
    owned = {"type": "doc", "id": "9", "properties": {"tenant": "acme", "owner": "carol"}}
    assert client.check(carol, "delete", owned).reasons == ("doc.owner",)


def test_unknown_type_or_action_is_a_deny_with_a_diagnostic(client: PdpClient) -> None:
    d = client.check(ALICE, "read", {"type": "spaceship", "id": "1"})
    assert not d.allowed
    assert [x.code for x in d.diagnostics] == ["unknown_resource_type"]
    d = client.check(ALICE, "fly", DOC)
    assert [x.code for x in d.diagnostics] == ["unknown_action"]


def test_bad_input_of_one_evaluation_is_a_deny_not_a_failed_call(client: PdpClient) -> None:
    ds = client.check_actions({"type": "user", "id": ""}, ["read", "write"], DOC)
    assert [d.allowed for d in ds] == [False, False]
    assert ds[0].diagnostics[0].code == "invalid_request"
    assert "`subject.id` is required" in ds[0].diagnostics[0].message
    ds = client.check_actions(ALICE, ["read", ""], DOC)
    assert [d.allowed for d in ds] == [True, False]
    assert "`actions[1].name` is required" in ds[1].diagnostics[0].message
    for bad in ("nope", "folder/", "/7", "/"):
        d = client.check(ALICE, "read", {**DOC, "ancestors": ["folder/7", bad]})
        assert not d.allowed and d.diagnostics[0].code == "invalid_request", bad
        assert "`resource.ancestors[1]` must be `type/id`" in d.diagnostics[0].message
    # An id may hold slashes: only the first one separates the type.
    assert client.check(ALICE, "read", {**DOC, "ancestors": ["folder/7/8"]}).allowed
    # A type may not: `user:x` + `y` would be the key of `user` + `x:y`, with its roles.
    d = client.check({"type": "user:alice", "id": "x"}, "read", DOC)
    assert not d.allowed and d.diagnostics[0].code == "invalid_request"
    assert "`subject.type` must not contain `:`" in d.diagnostics[0].message
    d = client.check(ALICE, "read", {**DOC, "type": "doc/x"})
    assert not d.allowed and "`resource.type` must not contain `/`" in d.diagnostics[0].message


def test_evaluations_defaults_and_order(client: PdpClient) -> None:
    ds = client.evaluations(
        [
            {"action": "read"},
            {"action": "write"},
            {"subject": BOB, "action": "write"},
            {"resource": NOTE, "action": "read"},
            {"resource": LOCKED, "subject": BOB, "action": "write"},
            {"action": "read", "resource": {"type": "doc", "id": "3"}},  # no tenant
        ],
        subject=ALICE,
        resource=DOC,
    )
    assert [d.allowed for d in ds] == [True, False, True, True, False, False]
    assert ds[3].reasons == ("note.viewer-read",)
    assert ds[4].reasons == ("doc.locked",)
    assert ds[5].diagnostics and ds[5].diagnostics[0].rule_id == "doc.tenant"


def test_evaluations_a_missing_part_is_a_deny_naming_it(client: PdpClient) -> None:
    ds = client.evaluations(
        [{"action": "read"}, {"action": "read", "resource": DOC}], subject=ALICE
    )
    assert not ds[0].allowed
    assert "`evaluations[0].resource` is required" in ds[0].diagnostics[0].message
    assert ds[1].allowed


@pytest.mark.parametrize(
    ("semantic", "expected"),
    [
        ("execute_all", [True, False, True, False]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
def test_evaluations_semantics(client: PdpClient, semantic: str, expected: list[bool]) -> None:
    evals = [{"action": "read"}, {"action": "write"}, {"action": "read"}, {"action": "delete"}]
    ds = client.evaluations(evals, subject=ALICE, resource=DOC, semantic=semantic)
    assert [d.allowed for d in ds] == expected


def test_permit_on_first_permit_with_no_permit_returns_all(client: PdpClient) -> None:
    evals = [{"action": "write"}, {"action": "delete"}]
    ds = client.evaluations(evals, subject=ALICE, resource=DOC, semantic="permit_on_first_permit")
    assert [d.allowed for d in ds] == [False, False]


def test_no_evaluations_is_one_evaluation_of_the_defaults(client: PdpClient) -> None:
    # AuthZEN 1.0 §7.1: without an evaluations array, the defaults are the request.
    [d] = client.evaluations([], subject=ALICE, action="read", resource=DOC)
    assert d.allowed and d.action == "read" and d.decision_id
    [d] = client.evaluations([], subject=ALICE, resource=DOC)
    assert not d.allowed and d.diagnostics[0].code == "invalid_request"
    assert "`action` is required" in d.diagnostics[0].message


def test_list_actions(client: PdpClient) -> None:
    r = client.list_actions(BOB, DOC)
    assert r.allowed == ("read", "write")
    assert [d.action for d in r.decisions] == ["read", "write", "delete"]
    assert r.policy_version and r.bindings_version
    r = client.list_actions(MALLORY, DOC)  # admin, but of another tenant
    assert r.allowed == ()
    r = client.list_actions(ALICE, {"type": "spaceship", "id": "1"})
    assert r.allowed == () and r.diagnostics[0].code == "unknown_resource_type"


def test_server_info(running: Running) -> None:
    info = running.client.server_info()
    assert info.policy_files == 3
    assert info.build.version and info.build.grpc and info.build.python
    assert info.last_reload.ok
    assert info.pid > 0
    assert info.started_at.seconds > 0


def test_health_and_reflection(running: Running) -> None:
    assert health_status(running.target) == "SERVING"
    assert health_status(running.target, "pdp.v1.DecisionService") == "SERVING"
    with grpc.insecure_channel(running.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names = {
            s.name
            for r in stub.ServerReflectionInfo(iter([req]), timeout=5)
            for s in r.list_services_response.service
        }
    assert "pdp.v1.DecisionService" in names
    assert "grpc.health.v1.Health" in names


def test_async_client(running: Running) -> None:
    async def go() -> None:
        async with AsyncPdpClient(running.target) as c:
            d = await c.check(ALICE, "read", DOC)
            assert d.allowed
            ds = await c.evaluations(
                [{"action": "read"}, {"action": "write"}], subject=BOB, resource=DOC
            )
            assert [x.allowed for x in ds] == [True, True]
            r = await c.list_actions(ALICE, DOC)
            assert r.allowed == ("read",)
            assert (await c.server_info()).policy_version == d.policy_version
            # Errors carry the status name, as the sync client's do.
            with pytest.raises(PdpError) as bad:
                await c.check(ALICE, "read", DOC, context={"x": "y" * 100_000})
            assert bad.value.code == "INVALID_ARGUMENT" and "context: " in bad.value.details
        async with AsyncPdpClient(f"127.0.0.1:{free_port()}", timeout=1) as gone:
            with pytest.raises(PdpError) as down:
                await gone.check(ALICE, "read", DOC)
            assert down.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")

    asyncio.run(go())


def test_client_deadline(running: Running) -> None:
    from pdp.client import PdpError

    c = PdpClient("127.0.0.1:1", timeout=0.2)  # nothing listens there
    with pytest.raises(PdpError) as exc:
        c.check(ALICE, "read", DOC)
    assert exc.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    c.close()


def test_a_raw_credential_needs_configured_resolvers(running: Running) -> None:
    """Without `[identity]` settings a credential cannot be checked: the caller is told
    (a setting to fix), instead of getting denies that look like a bad credential."""
    from pdp.v1 import decision_pb2 as pb
    from pdp.v1 import decision_pb2_grpc as pb_grpc

    with grpc.insecure_channel(running.target) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        req = pb.CheckRequest(
            actions=[pb.Action(name="read")],
            resource=pb.Resource(type="doc", id="1"),
            credential=pb.Credential(api_key="pdp_x"),
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(req, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "identity.apikeys" in (info.value.details() or "")


def test_the_client_takes_the_short_text_forms(client: PdpClient) -> None:
    # "user:alice" and "doc/1", as bindings and the audit log write them.
    short = client.check("user:alice", "read", "doc/1")
    long = client.check(ALICE, "read", {"type": "doc", "id": "1"})
    assert (
        (short.allowed, short.reasons) == (long.allowed, long.reasons) == (False, ("doc.tenant",))
    )
    assert client.check("user:alice", "read", DOC).allowed  # a mapping carries properties
    with pytest.raises(ValueError, match="subject 'alice': write `type:id`"):
        client.check("alice", "read", "doc/1")
    with pytest.raises(ValueError, match="resource 'doc': write `type/id`"):
        client.check("user:alice", "read", "doc")
