"""The decision record: what the audit log keeps about one decision, and its JSON form.

The server builds a record after the engine decided (the engine knows nothing of
it). A record is a frozen value; the writer fills in its place in the hash chain
(`chain`, `seq`, `prev`, `hash`) when it commits it.

The JSON form, one object per line, versioned by `v`::

    {"v": 1, "decision_id": "...", "time": "2026-11-26T12:00:00.000123Z", "caller": "...",
     "subject": {"type": "user", "id": "alice", "roles": ["viewer"]},
     "action": {"name": "read"}, "resource": {"type": "doc", "id": "1"},
     "decision": "allow", "reasons": [{"rule": "doc.viewer-read", "at": "docs.pdp:7"}],
     "diagnostics": [], "policy_version": "sha256:...", "bindings_version": "12",
     "latency_us": 180, "chain": "host", "seq": 42, "prev": "...", "hash": "..."}

`subject.properties`, `action.properties`, `resource.properties` (with
`resource.ancestors`) and `context` appear only when `AuditConfig.include` names
them, with the `AuditConfig.redact` paths replaced by `"[redacted]"`.

Version 2 added two optional sections, kept apart from the decision because
authentication is a separate step from authorization:

- `authn`: how the subject was established, for calls that carried a credential
  (the Envoy endpoint, pdp.v1 calls with a raw credential): `{"result": "ok",
  "method": "bearer", "credential": "<jti>"}`, or `{"result": "failed", "cause":
  "token_expired", ...}`, or `{"result": "anonymous"}`. Never the secret.
- `http`: the HTTP request an Envoy check asked about: `{"method", "host", "path",
  "route", "status"}` (`route` absent when none matched).

Version 1 records (without them) are still read, and verified with their own `v`.
"""

from __future__ import annotations

import hashlib
import json
import operator
import threading
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack

from pdp.engine.compile import CompiledPolicySet
from pdp.engine.decision import Decision, Diagnostic
from pdp.engine.request import Request

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # what `from_json` accepts; 1 lacks `authn` and `http`
GENESIS = "0" * 64  # `prev` of the first record of a chain
REDACTED = "[redacted]"
SECTIONS = ("subject", "action", "resource", "context")
# Sections `audit.redact` may name: `http` is recorded for Envoy checks whenever there
# is one (its path can hold what `resource.id` redacts), so it can be redacted too.
REDACTABLE_SECTIONS = (*SECTIONS, "http")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_sha256 = hashlib.sha256

# A record's fields in `DecisionRecord` order: without the chain fields and `v`
# (`RecordFields`, what `record_fields` makes), and with them (`ChainedFields`, what
# `new_record(*fields)` takes).
RecordFields = tuple[Any, ...]
ChainedFields = tuple[Any, ...]


class RecordError(ValueError):
    """A line or row that is not a valid decision record; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Reason:
    """A rule that decided: its id and where it is written (`file:line`), when known."""

    rule: str
    at: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision as the audit log keeps it. Attribute fields are None when not recorded."""

    decision_id: str
    time_us: int  # microseconds since the Unix epoch, UTC
    caller: str
    subject_type: str
    subject_id: str
    roles: tuple[str, ...]  # the roles that were used to decide
    action: str
    resource_type: str
    resource_id: str
    allowed: bool
    reasons: tuple[Reason, ...]
    diagnostics: tuple[Diagnostic, ...]
    policy_version: str
    bindings_version: str
    latency_us: int
    subject_properties: Mapping[str, Any] | None = None
    action_properties: Mapping[str, Any] | None = None
    resource_properties: Mapping[str, Any] | None = None
    resource_ancestors: tuple[str, ...] | None = None
    context: Mapping[str, Any] | None = None
    # Authentication and the HTTP request, apart from the decision (schema v2).
    authn: Mapping[str, Any] | None = None
    http: Mapping[str, Any] | None = None
    # Filled in by the writer, in commit order.
    chain: str = ""
    seq: int = 0
    prev: str = ""
    hash: str = ""
    v: int = SCHEMA_VERSION

    @property
    def time(self) -> datetime:
        return from_us(self.time_us)

    @property
    def decision(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def subject(self) -> str:
        return f"{self.subject_type}:{self.subject_id}"

    @property
    def resource(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (the line format); `hash` only once chained."""
        subject: dict[str, Any] = {
            "type": self.subject_type,
            "id": self.subject_id,
            "roles": list(self.roles),
        }
        if self.subject_properties is not None:
            subject["properties"] = self.subject_properties
        action: dict[str, Any] = {"name": self.action}
        if self.action_properties is not None:
            action["properties"] = self.action_properties
        resource: dict[str, Any] = {"type": self.resource_type, "id": self.resource_id}
        if self.resource_properties is not None:
            resource["properties"] = self.resource_properties
        if self.resource_ancestors is not None:
            resource["ancestors"] = list(self.resource_ancestors)
        out: dict[str, Any] = {
            "v": self.v,
            "decision_id": self.decision_id,
            "time": format_time(self.time_us),
            "caller": self.caller,
            "subject": subject,
            "action": action,
            "resource": resource,
            "decision": self.decision,
            "reasons": [{"rule": r.rule, "at": r.at} for r in self.reasons],
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "policy_version": self.policy_version,
            "bindings_version": self.bindings_version,
            "latency_us": self.latency_us,
            "chain": self.chain,
            "seq": self.seq,
            "prev": self.prev,
        }
        if self.context is not None:
            out["context"] = self.context
        if self.authn is not None:
            out["authn"] = self.authn
        if self.http is not None:
            out["http"] = self.http
        if self.hash:
            out["hash"] = self.hash
        return out


# --- canonical form and the chain -------------------------------------------------------


def _descriptor_init() -> Callable[..., DecisionRecord]:
    """A constructor with `DecisionRecord(...)`'s signature that sets the slots through
    their descriptors.

    The frozen dataclass's own `__init__` calls `object.__setattr__` once per field:
    about 45,000 instructions per record against 27,000 this way (callgrind). The writer
    builds one record per decision and a reader one per line, so it matters; the
    instances are the same (the class, its equality and its immutability are unchanged).
    """
    params: list[str] = []
    body: list[str] = []
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": DecisionRecord}
    for f in fields(DecisionRecord):
        if f.default_factory is not MISSING:
            raise TypeError(f"DecisionRecord.{f.name}: no default_factory here")
        ns[f"_set_{f.name}"] = DecisionRecord.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})\n")
    source = f"def new_record({', '.join(params)}):\n    self = _new(_cls)\n"
    exec(source + "".join(body) + "    return self\n", ns)  # as dataclasses does
    made: Callable[..., DecisionRecord] = ns["new_record"]
    return made


new_record = _descriptor_init()
_CHAIN_FIELDS = ("chain", "seq", "prev", "hash", "v")  # the last fields, set by the writer
_NAMES = [f.name for f in fields(DecisionRecord)]
if tuple(_NAMES[-len(_CHAIN_FIELDS) :]) != _CHAIN_FIELDS:
    raise TypeError(f"DecisionRecord must end with the fields {', '.join(_CHAIN_FIELDS)}")
# A record's `RecordFields`, taken in the class's own order (one C call).
_fields_of: Callable[[DecisionRecord], RecordFields] = operator.attrgetter(
    *_NAMES[: -len(_CHAIN_FIELDS)]
)


def canonical(obj: Mapping[str, Any]) -> str:
    """The one text a record hashes to: keys sorted, no spaces, UTF-8 (not \\u escapes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(obj: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical form of `obj` without its `hash` key.

    `prev` is part of what is hashed, which is what links each record to the one
    before it.
    """
    body = {k: v for k, v in obj.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def seal(record: DecisionRecord, chain: str, seq: int, prev: str) -> tuple[DecisionRecord, str]:
    """The record placed in `chain` at `seq` after `prev`, and its JSON line (no newline).

    The line is the canonical form with `hash` appended, so that a reader recomputes
    the hash from exactly what it parses.
    """
    body = canonical_body(record, chain, seq, prev)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    line = body[:-1] + f',"hash":"{digest}"}}'
    return _replace_chain(record, chain, seq, prev, digest), line


def seal_draft(
    draft: RecordDraft, chain: str, seq: int, prev: str
) -> tuple[ChainedFields, str, str]:
    """A draft placed in `chain` at `seq` after `prev`: its record's fields, its line and
    its hash.

    No record is made here: `new_record(*fields)` makes it when a sink wants one (the
    file sink reads only a batch's first and last). The line is formatted from the
    same fields, so it is the line `seal(new_record(*fields), ...)` gives.
    """
    values = draft.fields()
    body = fields_body(values, chain, seq, prev, SCHEMA_VERSION)
    digest = _sha256(body.encode("utf-8")).hexdigest()
    chained = (*values, chain, seq, prev, digest, SCHEMA_VERSION)
    return chained, body[:-1] + f',"hash":"{digest}"}}', digest


_json_str = json.encoder.encode_basestring  # the C encoder json.dumps uses with ensure_ascii=False
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_body(r: DecisionRecord, chain: str, seq: int, prev: str) -> str:
    """`canonical(record.to_json())` with the chain fields set, without the dicts."""
    return fields_body(_fields_of(r), chain, seq, prev, r.v)


def fields_body(f: RecordFields, chain: str, seq: int, prev: str, v: int) -> str:
    """The canonical form (without `hash`) of a record's fields, in `DecisionRecord`
    order, placed in `chain` at `seq` after `prev`.

    The writer seals every record with this, so it is written out by hand, key by key
    in sorted order; `tests/audit/test_record.py` checks that it equals `canonical`
    for any record.
    """
    (
        decision_id,
        time_us,
        caller,
        subject_type,
        subject_id,
        roles,
        action,
        resource_type,
        resource_id,
        allowed,
        reasons,
        diagnostics,
        policy_version,
        bindings_version,
        latency_us,
        subject_properties,
        action_properties,
        resource_properties,
        resource_ancestors,
        context,
        authn,
        http,
    ) = f
    s = _json_str
    enc = _ENCODER.encode
    # One f-string (a single BUILD_STRING) rather than a list of parts: this runs for
    # every record, and most records have none of the optional sections.
    action_props = "" if action_properties is None else f',"properties":{enc(action_properties)}'
    authn_part = "" if authn is None else f',"authn":{enc(authn)}'
    context_part = "" if context is None else f',"context":{enc(context)}'
    http_part = "" if http is None else f',"http":{enc(http)}'
    ancestors_part = (
        ""
        if resource_ancestors is None
        else f'"ancestors":[{",".join(map(s, resource_ancestors))}],'
    )
    resource_props = (
        "" if resource_properties is None else f',"properties":{enc(resource_properties)}'
    )
    subject_props = "" if subject_properties is None else f',"properties":{enc(subject_properties)}'
    diagnostics_part = (
        ",".join(
            [
                f'{{"code":{s(d.code)},"message":{s(d.message)},"rule_id":'
                f"{s(d.rule_id) if d.rule_id is not None else 'null'}}}"
                for d in diagnostics
            ]
        )
        if diagnostics
        else ""
    )
    reasons_part = ",".join(
        [f'{{"at":{s(x.at) if x.at is not None else "null"},"rule":{s(x.rule)}}}' for x in reasons]
    )
    decision = '"allow"' if allowed else '"deny"'
    return (
        f'{{"action":{{"name":{s(action)}{action_props}}}{authn_part}'
        f',"bindings_version":{s(bindings_version)},"caller":{s(caller)}'
        f',"chain":{s(chain)}{context_part},"decision":{decision}'
        f',"decision_id":{s(decision_id)},"diagnostics":[{diagnostics_part}]{http_part}'
        f',"latency_us":{int(latency_us)},"policy_version":{s(policy_version)}'
        f',"prev":{s(prev)},"reasons":[{reasons_part}]'
        f',"resource":{{{ancestors_part}"id":{s(resource_id)}{resource_props}'
        f',"type":{s(resource_type)}}},"seq":{int(seq)}'
        f',"subject":{{"id":{s(subject_id)}{subject_props}'
        f',"roles":[{",".join(map(s, roles))}],"type":{s(subject_type)}}}'
        f',"time":"{format_time(time_us)}","v":{int(v)}}}'
    )


def _replace_chain(r: DecisionRecord, chain: str, seq: int, prev: str, h: str) -> DecisionRecord:
    # dataclasses.replace re-runs __init__ with every field; this is the hot path of the
    # writer, so build the copy directly.
    return new_record(*_fields_of(r), chain, seq, prev, h, r.v)


# --- reading ----------------------------------------------------------------------------


def parse_line(line: str) -> tuple[DecisionRecord, dict[str, Any]]:
    """A JSON line → (record, the parsed object); RecordError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RecordError("not valid JSON (nested too deeply)") from None
    return from_json(obj), obj


def from_json(obj: object) -> DecisionRecord:
    """A parsed JSON object → record; RecordError naming the first bad field."""
    if not isinstance(obj, dict):
        raise RecordError("not a JSON object")
    v = obj.get("v")
    if isinstance(v, bool) or v not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise RecordError(f"unknown record version `v`: {v!r} (this pdp reads {readable})")
    subject = _obj(obj, "subject")
    action = _obj(obj, "action")
    resource = _obj(obj, "resource")
    decision = obj.get("decision")
    if decision not in ("allow", "deny"):
        raise RecordError(f'`decision` must be "allow" or "deny", got {decision!r}')
    try:
        time_us = to_us(parse_iso(_str(obj, "time")))
    except ValueError:
        raise RecordError(f"`time` is not an ISO 8601 time: {obj.get('time')!r}") from None
    reasons = []
    for i, r in enumerate(_list(obj, "reasons")):
        if not isinstance(r, dict) or not isinstance(r.get("rule"), str):
            raise RecordError(f"`reasons[{i}]` must be an object with a `rule`")
        at = r.get("at")
        reasons.append(Reason(r["rule"], at if isinstance(at, str) else None))
    diagnostics = []
    for i, d in enumerate(_list(obj, "diagnostics")):
        if not isinstance(d, dict) or not isinstance(d.get("code"), str):
            raise RecordError(f"`diagnostics[{i}]` must be an object with a `code`")
        rule = d.get("rule_id")
        diagnostics.append(
            Diagnostic(
                d["code"], str(d.get("message", "")), rule if isinstance(rule, str) else None
            )
        )
    ancestors = resource.get("ancestors")
    return new_record(
        decision_id=_str(obj, "decision_id"),
        time_us=time_us,
        caller=_str(obj, "caller"),
        subject_type=_str(subject, "type", "subject."),
        subject_id=_str(subject, "id", "subject."),
        roles=tuple(str(r) for r in _list(subject, "roles", "subject.")),
        action=_str(action, "name", "action."),
        resource_type=_str(resource, "type", "resource."),
        resource_id=_str(resource, "id", "resource."),
        allowed=decision == "allow",
        reasons=tuple(reasons),
        diagnostics=tuple(diagnostics),
        policy_version=_str(obj, "policy_version"),
        bindings_version=_str(obj, "bindings_version"),
        latency_us=_int(obj, "latency_us"),
        subject_properties=_opt_obj(subject, "properties", "subject."),
        action_properties=_opt_obj(action, "properties", "action."),
        resource_properties=_opt_obj(resource, "properties", "resource."),
        resource_ancestors=tuple(str(a) for a in ancestors)
        if isinstance(ancestors, list)
        else None,
        context=_opt_obj(obj, "context"),
        authn=_opt_obj(obj, "authn"),
        http=_opt_obj(obj, "http"),
        chain=_str(obj, "chain"),
        seq=_int(obj, "seq"),
        prev=_str(obj, "prev"),
        hash=_str(obj, "hash"),
        v=int(v),
    )


def _str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RecordError(f"`{where}{key}` must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"`{key}` must be an integer")
    return value


def _obj(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise RecordError(f"`{key}` must be an object")
    return value


def _opt_obj(obj: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise RecordError(f"`{where}{key}` must be an object")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise RecordError(f"`{where}{key}` must be a list")
    return value


# --- times ------------------------------------------------------------------------------


def to_us(t: datetime) -> int:
    """An aware datetime → microseconds since the epoch (exact, no float rounding)."""
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def format_time(us: int) -> str:
    """`2026-11-26T12:00:00.000123Z`: fixed width, so text order is time order."""
    global _second_text
    seconds, micros = divmod(us, 1_000_000)
    cached, text = _second_text  # one tuple: read and replaced whole, so thread-safe
    if cached != seconds:
        # Records come many to a second: the date and time text is made once per second.
        text = from_us(seconds * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (seconds, text)
    return f"{text}.{micros:06d}Z"


_second_text: tuple[int | None, str] = (None, "")


def parse_iso(text: str) -> datetime:
    """ISO 8601 → aware datetime (UTC when no zone is given); ValueError when malformed."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- building a record ------------------------------------------------------------------


class ConfigError(ValueError):
    """A bad audit setting (an unknown section to include, a bad redaction path)."""


@dataclass(frozen=True)
class AuditConfig:
    """Which attributes a record keeps, and which of their fields are redacted.

    `include` names sections among `subject`, `action`, `resource`, `context`
    (their properties; `resource` also its ancestors). `redact` holds dotted paths
    into the record, e.g. `subject.properties.email`, `context.ip`,
    `resource.properties.*.secret` (`*` matches any key), or `subject.id`.
    """

    include: frozenset[str] = frozenset()
    redact: tuple[str, ...] = ()
    _tree: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.include) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"audit.include: unknown section `{unknown[0]}`; choose from " + ", ".join(SECTIONS)
            )
        tree: dict[str, Any] = {}
        for path in self.redact:
            parts = path.split(".")
            if parts[0] not in REDACTABLE_SECTIONS or len(parts) < 2 or not all(parts):
                raise ConfigError(
                    f"audit.redact: `{path}` is not a field path; write e.g. "
                    "`subject.properties.email` or `context.ip`"
                )
            fields = _REDACTABLE.get(parts[0])
            if fields is not None and parts[1] not in fields:
                raise ConfigError(
                    f"audit.redact: `{path}` matches nothing; {parts[0]} fields are "
                    + ", ".join(f"`{f}`" for f in fields)
                )
            node = tree
            for p in parts:
                node = node.setdefault(p, {})
        self._tree.update(tree)

    def redacts(self, section: str) -> dict[str, Any] | None:
        """The redaction tree under `section`, or None when nothing there is redacted."""
        node = self._tree.get(section)
        return node if node else None


# What a redaction path may name after its section (`context.` takes any key).
_REDACTABLE: dict[str, tuple[str, ...]] = {
    "subject": ("id", "properties"),
    "action": ("properties",),
    "resource": ("id", "properties", "ancestors"),
    "http": ("method", "host", "path", "route", "status"),
}

NO_ATTRIBUTES = AuditConfig()


class RecordArgs(TypedDict):
    """`build_record`'s keyword arguments (see `record_fields`)."""

    decision_id: str
    caller: str
    latency_us: int
    time_us: NotRequired[int | None]
    bindings_version: NotRequired[str | None]
    policy: NotRequired[CompiledPolicySet | None]
    config: NotRequired[AuditConfig]
    authn: NotRequired[Mapping[str, Any] | None]
    http: NotRequired[Mapping[str, Any] | None]
    known_subject: NotRequired[tuple[str, str] | None]
    known_resource: NotRequired[tuple[str, str] | None]


def build_record(
    decision: Decision, request: Request | None, **args: Unpack[RecordArgs]
) -> DecisionRecord:
    """The record of one decision (the arguments are `record_fields`'s)."""
    return new_record(*record_fields(decision, request, **args))


def record_fields(
    decision: Decision,
    request: Request | None,
    *,
    decision_id: str,
    caller: str,
    latency_us: int,
    time_us: int | None = None,
    bindings_version: str | None = None,
    policy: CompiledPolicySet | None = None,
    config: AuditConfig = NO_ATTRIBUTES,
    authn: Mapping[str, Any] | None = None,
    http: Mapping[str, Any] | None = None,
    known_subject: tuple[str, str] | None = None,
    known_resource: tuple[str, str] | None = None,
) -> RecordFields:
    """The fields of the record of one decision, in `DecisionRecord` order (without the
    chain fields); `request` is None for a request that was not evaluated.

    `time_us` defaults to the request's clock (`request.now`), so that re-deriving the
    decision later sees the same time; `policy` gives the reasons their `file:line`.
    `authn` and `http` are the authentication and HTTP sections (see the module doc);
    `known_subject` and `known_resource` (`(type, id)`) name what was known of a request
    that was refused before an evaluation (e.g. an authenticated subject on an unknown route).
    """
    if time_us is None:
        now = request.now if request is not None and request.now else datetime.now(UTC)
        time_us = to_us(now)
    if policy is not None:
        places = _places(policy)
        reasons = tuple([places.get(r) or Reason(r) for r in decision.reasons])
    else:
        reasons = tuple(Reason(r) for r in decision.reasons)
    subject_props = action_props = resource_props = context = None
    ancestors: tuple[str, ...] | None = None
    subject_type, subject_id = known_subject or ("", "")
    resource_type, resource_id = known_resource or ("", "")
    if request is not None:
        subject_type, subject_id = request.subject.type, request.subject.id
        resource_type, resource_id = request.resource.type, request.resource.id
        inc = config.include
        if inc:
            if "subject" in inc:
                subject_props = _plain(request.subject.properties)
            if "action" in inc:
                action_props = _plain(request.action.properties)
            if "resource" in inc:
                resource_props = _plain(request.resource.properties)
                ancestors = request.resource.ancestors
            if "context" in inc:
                context = _plain(request.context)
    roles = decision.roles_used
    if config.redact:
        # Redaction works on the sections as the JSON form spells them, so that a path
        # means the same in the config as in the records people read.
        subject = _section(type=subject_type, id=subject_id, properties=subject_props)
        action = _section(properties=action_props)
        resource = _section(
            type=resource_type, id=resource_id, properties=resource_props, ancestors=ancestors
        )
        parts: dict[str, dict[str, Any] | None] = {
            "subject": subject,
            "action": action,
            "resource": resource,
            "context": context,
        }
        for section, value in parts.items():
            tree = config.redacts(section)
            if tree is not None and value is not None:
                parts[section] = _redact(value, tree)[0]
        subject, action, resource = (parts[k] or {} for k in ("subject", "action", "resource"))
        subject_type, subject_id = str(subject["type"]), str(subject["id"])
        subject_props, action_props = subject.get("properties"), action.get("properties")
        resource_type, resource_id = str(resource["type"]), str(resource["id"])
        resource_props, context = resource.get("properties"), parts["context"]
        kept = resource.get("ancestors")
        if kept is not None and not isinstance(kept, tuple):
            ancestors = (str(kept),)  # the whole list was redacted
    return (
        decision_id,
        time_us,
        caller,
        subject_type,
        subject_id,
        roles,
        decision.action,
        resource_type,
        resource_id,
        decision.allowed,
        reasons,
        decision.diagnostics,
        decision.policy_version,
        decision.bindings_version or bindings_version or "",
        latency_us,
        subject_props,
        action_props,
        resource_props,
        ancestors,
        context,
        _plain(authn) if authn is not None else None,
        None if http is None else _redacted_http(http, config),
    )


def _redacted_http(http: Mapping[str, Any], config: AuditConfig) -> dict[str, Any]:
    out = _plain(http)
    tree = config.redacts("http") if config.redact else None
    return _redact(out, tree)[0] if tree else out


class RecordDraft:
    """What `build_record` needs, kept until the audit writer seals the record.

    The server hands these to `Recorder.record` instead of finished records: the
    writer then works out each record's fields and line once, already in its place in
    the chain (`seal_draft`), off the caller's thread in `buffered` mode. Everything
    held here is immutable or owned by the call, so doing it later gives the same record.
    """

    __slots__ = ("decision", "request", "kwargs")

    def __init__(self, decision: Decision, request: Request | None, args: RecordArgs) -> None:
        # `args` as a dict, not as keywords: one per decision on the serving thread, and
        # a dict display costs less than half of a call that gathers keywords (0.37 µs
        # against 0.88).
        self.decision = decision
        self.request = request
        self.kwargs = args  # build_record's keyword arguments

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    @property
    def decision_id(self) -> str:
        return str(self.kwargs["decision_id"])

    def fields(self) -> RecordFields:
        """The record's fields (see `record_fields`)."""
        return record_fields(self.decision, self.request, **self.kwargs)

    def build(self) -> DecisionRecord:
        return new_record(*self.fields())


_places_cache: dict[str, dict[str, Reason]] = {}
_places_lock = threading.Lock()


def _places(policy: CompiledPolicySet) -> dict[str, Reason]:
    """rule id → its `Reason` (with `file:line`) for a policy version, made once.

    Records need them on every call; a `Reason` is immutable, so all records share one.
    """
    places = _places_cache.get(policy.version)
    if places is None:
        places = {rule: Reason(rule, policy.rule_location(rule)) for rule in policy.rules}
        with _places_lock:
            if len(_places_cache) >= 8:  # versions come and go with reloads: keep a few
                _places_cache.pop(next(iter(_places_cache)))
            _places_cache[policy.version] = places
    return places


def _section(**parts: Any) -> dict[str, Any]:
    return {k: v for k, v in parts.items() if v is not None}


def _redact(value: Any, tree: Mapping[str, Any]) -> tuple[Any, bool]:
    """Copy-on-write: only the dicts and lists on a redacted path are copied.

    A path goes through lists: `context.items.ssn` redacts `ssn` in every item.
    """
    if isinstance(value, list):
        items = [_redact(v, tree) for v in value]
        if not any(hit for _, hit in items):
            return value, False
        return [v for v, _ in items], True
    if not isinstance(value, dict):
        return value, False
    out: dict[str, Any] | None = None
    for key in list(value):
        sub = tree.get(key)
        star = tree.get("*")
        for node in (n for n in (sub, star) if n is not None):
            current = (out if out is not None else value)[key]
            if not node:  # a leaf of the path: this field goes
                new, hit = REDACTED, current != REDACTED
            else:
                new, hit = _redact(current, node)
            if hit:
                if out is None:
                    out = dict(value)
                out[key] = new
    return (out, True) if out is not None else (value, False)


def _plain(m: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy: mappings become dicts and tuples lists, recursively.

    The copy also detaches the record from the caller's objects, which a record
    waiting in the writer's queue must not share.
    """
    return {str(k): _plain_value(v) for k, v in m.items()}


def _plain_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return _plain(v)
    if isinstance(v, list | tuple):
        return [_plain_value(x) for x in v]
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)
