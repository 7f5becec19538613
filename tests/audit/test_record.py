"""Decision records: the fields, attributes only where configured, redaction, JSON, hashes."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError, fields, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.audit.record import (
    GENESIS,
    REDACTED,
    AuditConfig,
    ConfigError,
    DecisionRecord,
    Reason,
    RecordArgs,
    RecordDraft,
    RecordError,
    build_record,
    canonical,
    canonical_body,
    format_time,
    from_json,
    from_us,
    new_record,
    parse_iso,
    parse_line,
    record_hash,
    seal,
    seal_draft,
)
from pdp.engine.decide import decide
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Resource, Subject
from tests.audit.support import ALL, T0, policy, record, req, us


def test_a_record_has_every_field_of_the_decision() -> None:
    ps = policy()
    r = req("alice", "read", "42", tenant="acme")
    d = decide(ps, r, frozenset({"viewer"}))
    rec = build_record(
        d,
        r,
        decision_id="d-1",
        caller="spiffe://svc-a",
        latency_us=321,
        bindings_version="12",
        policy=ps,
    )
    assert rec.decision_id == "d-1"
    assert rec.time_us == us(T0)  # the request's clock, so re-deriving sees the same time
    assert rec.caller == "spiffe://svc-a"
    assert (rec.subject_type, rec.subject_id, rec.roles) == ("user", "alice", ("viewer",))
    assert (rec.action, rec.resource_type, rec.resource_id) == ("read", "doc", "42")
    assert rec.allowed and rec.decision == "allow"
    assert [(x.rule, x.at) for x in rec.reasons] == [("doc.viewer-read", "docs.pdp:7")]
    assert rec.policy_version == ps.version and rec.policy_version.startswith("sha256:")
    assert rec.bindings_version == "12"
    assert rec.latency_us == 321
    # Attributes are not recorded unless configured.
    assert rec.subject_properties is None and rec.context is None
    assert "properties" not in rec.to_json()["subject"] and "context" not in rec.to_json()


def test_a_deny_records_the_forbid_and_its_diagnostics() -> None:
    ps = policy()
    # No tenant on the subject: the tenant forbid errors, which denies (fail closed).
    r = req("alice", "read", "1")
    r = replace(r, subject=Subject("user", "alice", {}))
    rec = build_record(
        decide(ps, r, frozenset({"viewer"})),
        r,
        decision_id="d",
        caller="c",
        latency_us=1,
        policy=ps,
    )
    assert not rec.allowed
    assert [x.rule for x in rec.reasons] == ["doc.tenant"]
    assert rec.reasons[0].at == "docs.pdp:16"
    assert [(d.code, d.rule_id) for d in rec.diagnostics] == [("missing_attribute", "doc.tenant")]
    obj = rec.to_json()
    assert obj["decision"] == "deny"
    assert obj["diagnostics"][0]["code"] == "missing_attribute"


def test_attributes_only_for_the_configured_sections() -> None:
    cfg = AuditConfig(include=frozenset({"subject", "context"}))
    rec = record(1, config=cfg, context={"ip": "10.0.0.1"})
    assert rec.subject_properties == {"tenant": "acme"}
    assert rec.context == {"ip": "10.0.0.1"}
    assert rec.resource_properties is None and rec.resource_ancestors is None
    assert rec.action_properties is None
    obj = rec.to_json()
    assert obj["subject"]["properties"] == {"tenant": "acme"}
    assert "properties" not in obj["resource"] and "ancestors" not in obj["resource"]


def test_redaction_of_configured_fields() -> None:
    cfg = AuditConfig(
        include=frozenset({"subject", "resource", "context"}),
        redact=(
            "subject.properties.email",
            "context.headers.authorization",
            "resource.properties.*.secret",
            "context.missing.field",
        ),
    )
    r = req(
        props={"email": "a@example.com", "name": "Alice"},
        context={"headers": {"authorization": "Bearer x", "accept": "*/*"}, "ip": "1.2.3.4"},
    )
    resource = {"tenant": "acme", "a": {"secret": 1, "open": 2}, "b": {"secret": 3}}
    r = replace(r, resource=Resource("doc", "1", resource))
    d = Decision("read", True, (), (), "v1")
    rec = build_record(d, r, decision_id="x", caller="c", latency_us=1, config=cfg)
    assert rec.subject_properties == {"email": REDACTED, "name": "Alice", "tenant": "acme"}
    assert rec.context == {"headers": {"authorization": REDACTED, "accept": "*/*"}, "ip": "1.2.3.4"}
    assert rec.resource_properties == {
        "tenant": "acme",
        "a": {"secret": REDACTED, "open": 2},
        "b": {"secret": REDACTED},
    }
    # The caller's objects are untouched: the record holds copies.
    assert r.subject.properties["email"] == "a@example.com"
    assert r.context["headers"]["authorization"] == "Bearer x"


def test_redaction_goes_through_lists_and_into_the_http_section() -> None:
    cfg = AuditConfig(
        include=frozenset({"context"}), redact=("context.items.ssn", "resource.id", "http.path")
    )
    items = [{"ssn": "123", "name": "a"}, {"name": "b"}, "plain"]
    r = req(context={"items": items, "ip": "1.2.3.4"})
    d = Decision("read", True, (), (), "v1")
    http = {"method": "GET", "host": "h", "path": "/docs/1", "route": "docs", "status": 200}
    rec = build_record(d, r, decision_id="x", caller="c", latency_us=1, config=cfg, http=http)
    assert rec.context == {
        "items": [{"ssn": REDACTED, "name": "a"}, {"name": "b"}, "plain"],
        "ip": "1.2.3.4",
    }
    # The id is gone from the resource and from the path that carried it.
    assert rec.resource_id == REDACTED and rec.http is not None
    assert rec.http["path"] == REDACTED and rec.http["route"] == "docs"
    assert items[0]["ssn"] == "123" and http["path"] == "/docs/1"  # copies, not the caller's


def test_redacting_ids_and_ancestors() -> None:
    cfg = AuditConfig(include=frozenset({"resource"}), redact=("subject.id", "resource.ancestors"))
    rec = record(1, config=cfg)
    assert rec.subject_id == REDACTED
    assert rec.resource_ancestors == (REDACTED,)
    assert rec.resource_id == "1"


@pytest.mark.parametrize(
    ("include", "redact", "message"),
    [
        ({"subjects"}, (), "unknown section `subjects`"),
        (set(), ("email",), "`email` is not a field path"),
        (set(), ("subject.email",), "`subject.email` matches nothing"),
        (set(), ("subject..x",), "not a field path"),
        (set(), ("http.query",), "`http.query` matches nothing; http fields are"),
    ],
)
def test_bad_audit_config(include: set[str], redact: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuditConfig(include=frozenset(include), redact=redact)


def test_a_request_that_could_not_be_read_still_gets_a_record() -> None:
    d = Decision("read", False, (), (), "v1")
    rec = build_record(d, None, decision_id="x", caller="c", latency_us=1)
    assert (rec.subject_type, rec.resource_type, rec.allowed) == ("", "", False)


def test_json_round_trip_and_seal() -> None:
    rec = record(3)
    sealed, line = seal(rec, "host", 7, GENESIS)
    again, obj = parse_line(line)
    assert again == sealed
    assert (sealed.chain, sealed.seq, sealed.prev) == ("host", 7, GENESIS)
    assert record_hash(obj) == sealed.hash == obj["hash"]
    # The line is the canonical form: keys sorted, no spaces, hash last.
    assert line.startswith('{"action":') and line.endswith(f'"hash":"{sealed.hash}"}}')
    assert ", " not in line.split('"hash"')[0]


def test_the_hash_covers_every_field_and_the_link() -> None:
    rec = record(3)
    base, _ = seal(rec, "host", 7, GENESIS)
    assert seal(rec, "host", 7, "1" * 64)[0].hash != base.hash
    assert seal(rec, "host", 8, GENESIS)[0].hash != base.hash
    obj = json.loads(seal(rec, "host", 7, GENESIS)[1])
    obj["subject"]["roles"] = ["admin"]
    assert record_hash(obj) != base.hash


def test_unicode_is_kept_as_is() -> None:
    rec = record(1, props={"name": "Zoë 東京"})
    _, line = seal(rec, "h", 1, GENESIS)
    assert "Zoë 東京" in line
    assert parse_line(line)[0].subject_properties == {"tenant": "acme", "name": "Zoë 東京"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"v": 3}', "unknown record version"),
        ('{"v": 1, "subject": {}}', "`action` must be an object"),
    ],
)
def test_bad_lines(line: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_line(line)


def test_bad_field_types_are_named() -> None:
    obj = json.loads(seal(record(1), "h", 1, GENESIS)[1])
    obj["decision"] = "maybe"
    with pytest.raises(RecordError, match="`decision` must be"):
        from_json(obj)
    obj["decision"] = "allow"
    obj["time"] = "yesterday"
    with pytest.raises(RecordError, match="`time` is not an ISO 8601 time"):
        from_json(obj)
    obj["time"] = "2026-11-26T12:00:00.000000Z"
    obj["seq"] = "7"
    with pytest.raises(RecordError, match="`seq` must be an integer"):
        from_json(obj)


# --- the writer's hand-written canonical form equals the general one --------------------

_text = st.text(max_size=12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_props = st.none() | st.dictionaries(_text, _json, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(_text, min_size=11, max_size=11),
    allowed=st.booleans(),
    numbers=st.tuples(
        st.integers(min_value=0, max_value=253_402_300_799_999_999),  # up to year 9999
        st.integers(min_value=0, max_value=2**40),
        st.integers(min_value=1, max_value=2**62),
    ),
    roles=st.lists(_text, max_size=3),
    reasons=st.lists(st.tuples(_text, st.none() | _text), max_size=3),
    diagnostics=st.lists(st.tuples(_text, _text, st.none() | _text), max_size=2),
    ancestors=st.none() | st.lists(_text, max_size=3),
    props=st.tuples(_props, _props, _props, _props, _props, _props),
)
def test_canonical_body_equals_the_canonical_form(
    texts: list[str],
    allowed: bool,
    numbers: tuple[int, int, int],
    roles: list[str],
    reasons: list[tuple[str, str | None]],
    diagnostics: list[tuple[str, str, str | None]],
    ancestors: list[str] | None,
    props: tuple[Any, Any, Any, Any, Any, Any],
) -> None:
    time_us, latency, seq = numbers
    rec = DecisionRecord(
        decision_id=texts[0],
        time_us=time_us,
        caller=texts[1],
        subject_type=texts[2],
        subject_id=texts[3],
        roles=tuple(roles),
        action=texts[4],
        resource_type=texts[5],
        resource_id=texts[6],
        allowed=allowed,
        reasons=tuple(Reason(r, at) for r, at in reasons),
        diagnostics=tuple(Diagnostic(c, m, rule) for c, m, rule in diagnostics),
        policy_version=texts[7],
        bindings_version=texts[8],
        latency_us=latency,
        subject_properties=props[0],
        action_properties=props[1],
        resource_properties=props[2],
        resource_ancestors=tuple(ancestors) if ancestors is not None else None,
        context=props[3],
        authn=props[4],
        http=props[5],
    )
    obj = rec.to_json()
    obj["chain"], obj["seq"], obj["prev"] = texts[9], seq, texts[10]
    assert canonical_body(rec, texts[9], seq, texts[10]) == canonical(obj)
    sealed, line = seal(rec, texts[9], seq, texts[10])
    again, parsed = parse_line(line)
    assert record_hash(parsed) == sealed.hash
    assert (again.authn, again.http) == (rec.authn, rec.http)


def test_version_1_records_are_still_read_and_verify_with_their_own_version() -> None:
    old = replace(record(1), v=1)
    sealed, line = seal(old, "h", 1, GENESIS)
    assert '"v":1' in line and '"authn"' not in line
    again, parsed = parse_line(line)
    assert again.v == 1 and again.authn is None and again.http is None
    assert record_hash(parsed) == sealed.hash
    assert seal(again, "h", 1, GENESIS)[1] == line


def test_time_text_is_exact_and_fixed_width() -> None:
    for t in (0, 1, 999_999, 1_000_000, us(T0) + 123_456, 253_402_300_799_999_999):
        text = format_time(t)
        assert len(text) == 27 and parse_iso(text[:-1] + "+00:00") == from_us(t)


def test_the_fast_constructor_makes_the_same_frozen_records() -> None:
    built = record(3)
    values = {f.name: getattr(built, f.name) for f in fields(DecisionRecord)}
    # Keywords, positions and defaults, as DecisionRecord(...) takes them.
    assert new_record(**values) == DecisionRecord(**values) == built
    assert new_record(*values.values()) == built
    minimal = {k: values[k] for k in list(values)[:15]}  # the fields without defaults
    assert new_record(**minimal) == DecisionRecord(**minimal)
    assert repr(new_record(**minimal)) == repr(DecisionRecord(**minimal))
    made = new_record(**values)
    assert type(made) is DecisionRecord and not hasattr(made, "__dict__")
    assert pickle.loads(pickle.dumps(made)) == made
    assert replace(made, seq=9).seq == 9 and made.seq == built.seq
    with pytest.raises(FrozenInstanceError):
        made.seq = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        new_record(**values, surplus=1)


DRAFTS: dict[str, tuple[bool, dict[str, Any]]] = {
    # name: (evaluated, build_record's arguments beyond the ids)
    "no attributes": (True, {"policy": policy()}),
    "every section, redacted": (
        True,
        {
            "config": AuditConfig(
                include=ALL.include,
                redact=("subject.properties.tenant", "resource.id", "http.path"),
            ),
            "http": {"method": "GET", "path": "/docs/1", "status": 403},
        },
    ),
    "authenticated, store revision": (
        True,
        {"authn": {"result": "ok", "method": "bearer"}, "bindings_version": "12"},
    ),
    "not evaluated": (
        False,
        {"known_subject": ("user", "mallory"), "known_resource": ("doc", "9"), "time_us": 7},
    ),
}


@pytest.mark.parametrize("name", DRAFTS)
def test_a_sealed_draft_is_its_record_sealed(name: str) -> None:
    evaluated, extra = DRAFTS[name]
    r = req("alice", "read", "1", subject_tenant="globex", context={"ip": "10.0.0.1"})
    d = decide(policy(), r, frozenset({"viewer"}))  # a deny: the tenants differ
    if not evaluated:  # refused before the engine, with the reason as diagnostic
        d = Decision("read", False, (), (Diagnostic("unknown_route", "no route", None),), "v")
    args: RecordArgs = {"decision_id": "d-1", "caller": "svc", "latency_us": 5, **extra}
    request = r if evaluated else None
    fields, line, digest = seal_draft(RecordDraft(d, request, args), "h", 3, "ab" * 32)
    record, expected = seal(build_record(d, request, **args), "h", 3, "ab" * 32)
    assert line == expected
    assert new_record(*fields) == record and digest == record.hash
    assert parse_line(line)[0] == record
