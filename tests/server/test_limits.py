"""Limits and malformed requests: INVALID_ARGUMENT naming the field, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp.client import PdpClient, PdpError
from pdp.server.app import PdpServer
from pdp.server.config import load_config
from pdp.v1 import decision_pb2 as pb
from tests.server.support import ALICE, DOC

LIMITS = {
    "limits.max_message_bytes": 4000,
    "limits.max_batch": 5,
    "limits.max_depth": 3,
    "limits.max_attributes_bytes": 1000,
    "limits.max_string_length": 50,
    "limits.max_ancestors": 2,
}


@pytest.fixture
def small(policy_dir: Path, bindings_file: Path) -> Iterator[tuple[PdpClient, str]]:
    flags: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "policies": str(policy_dir),
        "store.bindings_file": str(bindings_file),
        **LIMITS,
    }
    server = PdpServer(load_config(None, environ={}, flags=flags))
    port = server.start()
    client = PdpClient(f"127.0.0.1:{port}", timeout=5)
    yield client, f"127.0.0.1:{port}"
    client.close()
    server.stop(0.5)


def invalid(call: Any) -> str:
    with pytest.raises(PdpError) as exc:
        call()
    assert exc.value.code == "INVALID_ARGUMENT", exc.value
    assert "Traceback" not in exc.value.details
    return exc.value.details


def test_batch_size(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    evals = [{"action": "read"}] * 6
    msg = invalid(lambda: client.evaluations(evals, subject=ALICE, resource=DOC))
    assert msg == "evaluations: 6 evaluations, more than 5"
    assert len(client.evaluations(evals[:5], subject=ALICE, resource=DOC)) == 5
    msg = invalid(lambda: client.check_actions(ALICE, ["read"] * 6, DOC))
    assert msg == "actions: 6 actions, more than 5"


def test_check_needs_an_action(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    assert invalid(lambda: client.check_actions(ALICE, [], DOC)) == (
        "actions: at least one action is required"
    )


def test_string_length_names_the_path(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    long = "x" * 51
    res = {**DOC, "properties": {"tenant": "acme", "tags": ["a", "b", long]}}
    msg = invalid(
        lambda: client.evaluations(
            [{"action": "read"}, {"action": "read", "resource": res}], subject=ALICE, resource=DOC
        )
    )
    assert msg == "evaluations[1].resource.properties.tags[2]: string longer than 50 characters"
    msg = invalid(lambda: client.check({"type": "user", "id": long}, "read", DOC))
    assert msg == "subject.id: string longer than 50 characters"
    msg = invalid(lambda: client.check(ALICE, "read", DOC, {long: 1}))
    assert msg.startswith("context[") and msg.endswith("key longer than 50 characters")
    msg = invalid(lambda: client.check(ALICE, "read", DOC, {"odd key": long}))
    assert msg == "context['odd key']: string longer than 50 characters"


def test_depth(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    ok = {"a": {"b": {"c": 1}}}
    assert client.check(ALICE, "read", DOC, ok).allowed
    msg = invalid(lambda: client.check(ALICE, "read", DOC, {"a": {"b": {"c": {"d": 1}}}}))
    assert msg == "context.a.b.c: nested deeper than 3 levels"
    msg = invalid(lambda: client.check(ALICE, "read", DOC, {"a": [[["x"]]]}))
    assert msg == "context.a[0][0]: nested deeper than 3 levels"


def test_attributes_size(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    big = {f"k{i}": "v" * 40 for i in range(30)}
    msg = invalid(lambda: client.check({**ALICE, "properties": big}, "read", DOC))
    assert msg.startswith("subject.properties: ") and msg.endswith("more than 1000")


def test_ancestors(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    res = {**DOC, "ancestors": ["folder/1", "folder/2", "folder/3"]}
    assert invalid(lambda: client.check(ALICE, "read", res)) == (
        "resource.ancestors: more than 2 entries"
    )


def test_message_size(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    evals = [{"action": {"name": "read", "properties": {"p": "y" * 45}}}] * 5
    many = [{**e, "context": {f"k{i}": "z" * 45 for i in range(15)}} for e in evals]
    msg = invalid(lambda: client.evaluations(many, subject=ALICE, resource=DOC))
    assert msg.startswith("request: ") and "limits.max_message_bytes (4000)" in msg


def test_malformed_bytes(small: tuple[PdpClient, str]) -> None:
    _, target = small
    # Garbage, and a subject id that is not UTF-8 (field 1 holding field 2 = b"\xff").
    for bad in (b"\xff\xff\xff\xff", b"\x0a\x03\x12\x01\xff"):
        with grpc.insecure_channel(target) as ch:
            raw = ch.unary_unary("/pdp.v1.DecisionService/Check")
            with pytest.raises(grpc.RpcError) as exc:
                raw(bad, timeout=5)
        err = exc.value
        assert isinstance(err, grpc.Call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == (
            "request: not a valid pdp.v1.CheckRequest message (corrupt bytes, a string "
            "that is not UTF-8, or attributes nested deeper than protobuf's 100 levels)"
        )


def test_unknown_semantic(small: tuple[PdpClient, str]) -> None:
    _, target = small
    req = pb.EvaluationsRequest(semantic=99)  # type: ignore[arg-type]
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            "/pdp.v1.DecisionService/Evaluations",
            request_serializer=pb.EvaluationsRequest.SerializeToString,
            response_deserializer=pb.EvaluationsResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as exc:
            call(req, timeout=5)
    assert isinstance(exc.value, grpc.Call)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == "semantic: unknown evaluations semantic 99"


def test_numbers_are_exact_and_non_finite_is_refused(small: tuple[PdpClient, str]) -> None:
    client, _ = small
    d = client.check(ALICE, "read", DOC, {"n": 3})
    assert d.allowed
    msg = invalid(lambda: client.check(ALICE, "read", DOC, {"n": float("nan")}))
    assert msg == "context.n: number is not finite"
