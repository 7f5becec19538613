"""CheckResponse builders: what Envoy is told to do."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2  # type: ignore[import-untyped]

from pdp.envoy.authorize import header_values
from pdp.envoy.responses import FORBIDDEN_BODY, UNAUTHORIZED_BODY, allow, deny

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def test_allow_sets_identity_headers_overwriting_what_the_client_sent() -> None:
    r = allow(subject_key="user:alice", decision_id="d-1", remove_headers=["Authorization"])
    assert r.status.code == code_pb2.OK
    assert header_values(r) == {"x-pdp-subject": "user:alice", "x-pdp-decision-id": "d-1"}
    assert all(h.append_action == OVERWRITE for h in r.ok_response.headers)
    assert list(r.ok_response.headers_to_remove) == ["authorization"]


def test_allow_without_a_subject_removes_any_forged_subject_header() -> None:
    r = allow(subject_key=None, decision_id="d-1")
    assert "x-pdp-subject" not in header_values(r)
    assert list(r.ok_response.headers_to_remove) == ["x-pdp-subject"]


def test_a_403_is_permission_denied_with_the_generic_body() -> None:
    r = deny(403, decision_id="d-2", bearer_realm="docs")
    assert r.status.code == code_pb2.PERMISSION_DENIED
    assert r.denied_response.status.code == 403
    assert r.denied_response.body == FORBIDDEN_BODY
    assert "www-authenticate" not in header_values(r)  # only a 401 challenges
    assert header_values(r)["x-pdp-decision-id"] == "d-2"


def test_a_401_challenges_for_a_bearer_token_without_saying_what_was_wrong() -> None:
    r = deny(401, decision_id="d-3", bearer_realm="docs")
    assert r.denied_response.status.code == 401
    assert header_values(r)["www-authenticate"] == 'Bearer realm="docs"'
    assert json.loads(r.denied_response.body) == json.loads(UNAUTHORIZED_BODY)
    assert "error=" not in header_values(r)["www-authenticate"]
    assert "www-authenticate" not in header_values(deny(401, decision_id="d"))


def test_only_401_and_403() -> None:
    with pytest.raises(ValueError):
        deny(500, decision_id="d")
