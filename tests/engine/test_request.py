"""JSON → `Request`: the AuthZEN shapes `pdp check` accepts, and what it says about the rest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pdp.engine.request import (
    Action,
    Request,
    RequestError,
    Resource,
    Subject,
    parse_evaluations,
    parse_request,
)

REPO = Path(__file__).resolve().parents[2]
SUBJECT = {"type": "user", "id": "bob"}
ACTION = {"name": "read"}
RESOURCE = {"type": "document", "id": "42"}


def full(**changes: Any) -> dict[str, Any]:
    """A complete single request, with keys replaced (or removed, with None)."""
    req = {"subject": SUBJECT, "action": ACTION, "resource": RESOURCE, **changes}
    return {k: v for k, v in req.items() if v is not None}


def error(obj: object) -> str:
    with pytest.raises(RequestError) as info:
        parse_evaluations(obj)
    return str(info.value)


# --- what is accepted ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples" / "requests").glob("*.json")), ids=lambda p: p.name
)
def test_every_example_request_parses(path: Path) -> None:
    requests, _ = parse_evaluations(json.loads(path.read_text(encoding="utf-8")))
    assert requests


def test_the_documented_shapes_parse() -> None:
    docs = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", docs, re.S)
    assert blocks
    for block in blocks:
        parse_evaluations(json.loads(block))


def test_every_key_of_the_shape_is_accepted() -> None:
    subject = {**SUBJECT, "properties": {"department": "eng"}}
    action = {**ACTION, "properties": {"reason": "audit"}}
    resource = {**RESOURCE, "properties": {"tenant": "acme"}, "ancestors": ["folder/7"]}
    single = {"subject": subject, "action": action, "resource": resource, "context": {"a": 1}}
    [req], batch = parse_evaluations(single)
    assert not batch
    assert req == Request(
        Subject("user", "bob", {"department": "eng"}),
        Action("read", {"reason": "audit"}),
        Resource("document", "42", {"tenant": "acme"}, ("folder/7",)),
        {"a": 1},
    )
    requests, batch = parse_evaluations({**single, "evaluations": [single, {}]})
    assert batch and requests == [req, req]
    requests, batch = parse_evaluations(
        {"subject": subject, "resource": resource, "actions": [action, ACTION]}
    )
    assert batch and [r.action.name for r in requests] == ["read", "read"]


# --- what is refused ------------------------------------------------------------------


@pytest.mark.parametrize("part", ["subject", "action", "resource"])
def test_a_missing_part_is_required(part: str) -> None:
    assert error(full(**{part: None})) == f"`{part}`: is required"


def test_a_missing_part_in_an_evaluation_names_it() -> None:
    req = {"subject": SUBJECT, "resource": RESOURCE, "evaluations": [{"action": ACTION}, {}]}
    assert error(req) == "`evaluations[1].action`: is required"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "read"}, '`action`: must be an object, not a string; write `{"name": "read"}`'),
        (
            {"subject": "user:bob"},
            '`subject`: must be an object, not a string; write `{"type": "user", "id": "bob"}`',
        ),
        (
            {"resource": "document/42"},
            '`resource`: must be an object, not a string; write `{"type": "document", "id": "42"}`',
        ),
        ({"subject": "bob"}, "`subject`: must be an object with `type` and `id`"),
        ({"resource": ["document", "42"]}, "`resource`: must be an object with `type` and `id`"),
        ({"action": None}, "`action`: is required"),
        ({"action": 3}, "`action`: must be an object with `name`"),
    ],
)
def test_a_part_that_is_not_an_object(changes: dict[str, Any], message: str) -> None:
    assert error(full(**changes)) == message


def test_a_string_action_in_the_actions_list() -> None:
    req = {"subject": SUBJECT, "resource": RESOURCE, "actions": [ACTION, "update"]}
    assert error(req) == (
        '`actions[1]`: must be an object, not a string; write `{"name": "update"}`'
    )


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (
            full(subject={**SUBJECT, "props": {"tenant": "acme"}}),
            "`subject`: unknown key `props`; did you mean `properties`?",
        ),
        (full(action={"name": "read", "prop": {}}), "`action`: unknown key `prop`"),
        (
            full(resource={**RESOURCE, "ancestor": ["folder/7"]}),
            "`resource`: unknown key `ancestor`; did you mean `ancestors`?",
        ),
        (full(contxt={}), "`request`: unknown key `contxt`; did you mean `context`?"),
        (full(evaluation=[]), "`request`: unknown key `evaluation`; did you mean `evaluations`?"),
        (
            {**full(), "evaluations": [{"action": ACTION, "resorce": RESOURCE}]},
            "`evaluations[0]`: unknown key `resorce`; did you mean `resource`?",
        ),
        (
            {**full(), "evaluations": [{"subject": {**SUBJECT, "tpye": "user"}}]},
            "`evaluations[0].subject`: unknown key `tpye`; did you mean `type`?",
        ),
        (
            {"subject": SUBJECT, "resource": RESOURCE, "actions": [{"nme": "read"}]},
            "`actions[0]`: unknown key `nme`; did you mean `name`?",
        ),
    ],
)
def test_unknown_keys_are_errors(req: dict[str, Any], message: str) -> None:
    assert error(req) == message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"options": {"evaluations_semantic": "deny_on_first_deny"}},
            "`options`: is not supported offline; every evaluation is decided",
        ),
        (
            {"semantic": "DENY_ON_FIRST_DENY"},
            "`semantic`: is not supported offline; every evaluation is decided",
        ),
        (
            {"credential": {"api_key": "pdp_x_y"}},
            "`credential`: is not supported offline; give the `subject` instead",
        ),
        (
            {"actions": [ACTION], "evaluations": [{}]},
            "`actions`: cannot be used together with `evaluations`",
        ),
    ],
)
def test_keys_that_would_be_ignored_are_errors(extra: dict[str, Any], message: str) -> None:
    assert error({**full(), **extra}) == message


def test_parse_request_checks_keys_too() -> None:
    """`pdp test` builds requests from fixtures with `parse_request`: typos there too."""
    with pytest.raises(RequestError) as info:
        parse_request({**full(), "resource": {**RESOURCE, "propertes": {}}})
    assert str(info.value) == "`resource`: unknown key `propertes`; did you mean `properties`?"
    with pytest.raises(RequestError) as info:
        parse_request({**full(), "actions": []}, "cases[0]")
    assert str(info.value) == "`cases[0]`: unknown key `actions`; did you mean `action`?"


def test_no_evaluations_is_one_evaluation_of_the_defaults() -> None:
    # As the server's Evaluations call (AuthZEN 1.0 section 7.1).
    requests, batch = parse_evaluations(full(evaluations=[]))
    assert batch and len(requests) == 1 and requests[0].action.name == "read"
    assert error(full(action=None, evaluations=[])) == "`action`: is required"


def test_a_type_holding_its_separator_is_refused() -> None:
    # `user:x` + `y` would be the key of `user` + `x:y`: another subject's roles.
    assert error(full(subject={"type": "user:x", "id": "y"})) == (
        "`subject.type`: must not contain `:`, which separates type and id in `type:id`"
    )
    assert error(full(resource={"type": "doc/x", "id": "1"})) == (
        "`resource.type`: must not contain `/`, which separates type and id in `type/id`"
    )
