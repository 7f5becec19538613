"""`pdp serve` settings: one table of keys, read from TOML, environment and flags.

Precedence: flags > environment (`PDP_<SECTION>_<KEY>`, e.g. `PDP_LIMITS_MAX_BATCH`)
> the config file > defaults. Every value is checked by the same code whatever its
source, and a bad one is reported as one line naming where it came from and the key:

    config.toml: limits.max_batch: must be a positive integer, got "ten"
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdp.audit.record import SECTIONS
from pdp.audit.recorder import SINKS, AuditSettings, default_directory
from pdp.audit.writer import MODES
from pdp.lang.errors import did_you_mean


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the source and the key."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one call may carry; a request over a limit gets INVALID_ARGUMENT naming the field."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1000
    max_depth: int = 16
    max_attributes_bytes: int = 64 * 1024
    max_string_length: int = 4096
    max_ancestors: int = 64
    max_concurrent_rpcs: int = 1000


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    allowed_callers: tuple[str, ...] = ()
    allow_plaintext: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """`[envoy]`: the `envoy.service.auth.v3.Authorization/Check` endpoint (docs/envoy.md)."""

    enabled: bool = False
    routes: str = ""  # "" = `routes.yaml` in the policies directory
    remove_headers: tuple[str, ...] = ()
    subject_header: str = "x-pdp-subject"
    decision_header: str = "x-pdp-decision-id"
    realm: str = "pdp"
    context_headers: tuple[str, ...] = ()  # empty: every non-credential header


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """`[identity.jwt]`: one trusted token issuer; off while `issuer` is empty."""

    issuer: str = ""
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_file: str = ""
    jwks_url: str = ""
    jwks_ttl: float = 300.0
    jwks_min_refresh: float = 30.0
    leeway: float = 30.0
    subject_claim: str = "sub"
    subject_type: str = "user"
    type_claim: str = ""
    allowed_types: tuple[str, ...] = ()
    token_types: tuple[str, ...] = ()
    scopes_claim: str = "scope"
    properties: Mapping[str, str] = field(default_factory=dict)  # property → claim path
    revocation_refresh: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


@dataclass(frozen=True, slots=True)
class ApiKeysConfig:
    """`[identity.apikeys]`: API keys in the store, checked with the server's pepper."""

    enabled: bool = False
    pepper_file: str = ""  # "" = $PDP_APIKEY_PEPPER
    header: str = "x-api-key"
    in_bearer: bool = True
    # The secret itself, read from `pepper_file` or the environment by `load_config`.
    pepper: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """`[identity.sessions]`: browser sessions in the store, by cookie."""

    enabled: bool = False
    cookie: str = "pdp_session"
    idle_timeout: float = 0.0  # seconds; 0 = each session's own idle timeout
    renew_after: float = 60.0


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """`[identity]`: who is asking, for the Envoy endpoint and raw pdp.v1 credentials."""

    order: tuple[str, ...] = ("bearer", "apikey", "session")
    jwt: JwtConfig = field(default_factory=JwtConfig)
    apikeys: ApiKeysConfig = field(default_factory=ApiKeysConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)

    @property
    def enabled(self) -> bool:
        """Whether any credential is accepted at all."""
        return self.jwt.enabled or self.apikeys.enabled or self.sessions.enabled


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `pdp serve` needs; built by `load_config`, immutable afterwards."""

    listen: str = "127.0.0.1:50051"
    policies: str = "policies"
    schema: str = ""
    workers: int = 1
    threads: int = 16
    grace_seconds: float = 10.0
    log_level: str = "info"
    store_url: str = "sqlite:///pdp.db"
    store_poll_interval: float = 1.0
    store_max_staleness: float = 30.0
    bindings_file: str = ""
    reload_enabled: bool = True
    reload_debounce_ms: int = 200
    audit: AuditSettings = field(default_factory=AuditSettings)
    limits: Limits = field(default_factory=Limits)
    tls: TlsConfig = field(default_factory=TlsConfig)
    envoy: EnvoyConfig = field(default_factory=EnvoyConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)

    @property
    def routes_path(self) -> Path | None:
        """The route table file when the Envoy endpoint is on, else None."""
        if not self.envoy.enabled:
            return None
        return Path(self.envoy.routes) if self.envoy.routes else Path(self.policies) / "routes.yaml"

    @property
    def host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def port(self) -> int:
        return split_address(self.listen)[1]


# --- the key table ---------------------------------------------------------------------

Check = Callable[[object], Any]


def _positive_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a positive integer")
    return v


def _non_negative_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("must be an integer, 0 or more")
    return v


def _number(v: object) -> float | None:
    """`v` as a float when it is a finite number (not a bool), else None: `nan` and
    `inf` pass every comparison a range check makes, and would quietly break timers."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _positive_number(v: object) -> float:
    n = _number(v)
    if n is None or n <= 0:
        raise ValueError("must be a positive number")
    return n


def _refresh_interval(v: object) -> float:
    # Below a second, tokens with made-up `kid`s would make the PDP hammer the issuer.
    n = _number(v)
    if n is None or n < 1:
        raise ValueError("must be a number of seconds, 1 or more")
    return n


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _string(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


class _ValueShown(ValueError):
    """The message already shows the value, as it may be shown (a URL's password masked)."""


def _store_url(v: object) -> str:
    from pdp.store.config import parse_url  # SQLAlchemy: only when a URL is given
    from pdp.store.errors import StoreError

    url = _string(v)
    try:
        parse_url(url)
    except StoreError as exc:
        raise _ValueShown(exc.message) from None
    return url


def _audit_url(v: object) -> str:
    url = _string(v)
    if url:  # "" unless audit.sink = "sql", which checks that it is set
        from pdp.audit.sink import SinkError
        from pdp.audit.sql import parse_url

        try:
            parse_url(url)
        except SinkError as exc:
            raise _ValueShown(str(exc)) from None
    return url


def _strings(v: object) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(s, str) and s for s in v):
        raise ValueError("must be a list of non-empty strings")
    return tuple(v)


def _share(v: object) -> float:
    n = _number(v)
    if n is None or not 0 <= n <= 1:
        raise ValueError("must be a number from 0 to 1")
    return n


def _sections(v: object) -> tuple[str, ...]:
    names = _strings(v)
    for n in names:
        if n not in SECTIONS:
            raise ValueError("must name sections among " + ", ".join(SECTIONS))
    return names


def _one_of(*choices: str) -> Check:
    def check(v: object) -> str:
        if v not in choices:
            raise ValueError("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return str(v)

    return check


def _non_negative_number(v: object) -> float:
    n = _number(v)
    if n is None or n < 0:
        raise ValueError("must be a number, 0 or more")
    return n


def _header_names(v: object) -> tuple[str, ...]:
    names = _strings(v)
    for n in names:
        _header_name(n)
    return tuple(n.lower() for n in names)


def _header_name(v: object) -> str:
    # RFC 9110 token characters; pseudo-headers (`:path`) are not headers to set or remove.
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
        raise ValueError("must be an HTTP header name such as `x-api-key`")
    return v.lower()


def _cookie_name(v: object) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
        raise ValueError("must be a cookie name such as `pdp_session`")
    return v


def _algorithms(v: object) -> tuple[str, ...]:
    from pdp.identity.jwks import SUPPORTED_ALGORITHMS

    names = _strings(v)
    if not names:
        raise ValueError("must name at least one algorithm")
    for n in names:
        if n not in SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"`{n}` is not supported; use "
                + ", ".join(sorted(SUPPORTED_ALGORITHMS))
                + " (`none` and HMAC are refused on purpose)"
            )
    return names


def _kinds(v: object) -> tuple[str, ...]:
    names = _strings(v)
    allowed = ("bearer", "apikey", "session")
    if not names or len(set(names)) != len(names) or not set(names) <= set(allowed):
        raise ValueError("must list each of " + ", ".join(f'"{k}"' for k in allowed) + " once")
    return names


def _claim_map(v: object) -> dict[str, str]:
    if not isinstance(v, Mapping) or not all(
        isinstance(k, str) and k and isinstance(c, str) and c for k, c in v.items()
    ):
        raise ValueError('must be a table of property = "claim.path" strings')
    return dict(v)


def _leeway(v: object) -> float:
    from pdp.identity.jwt import MAX_LEEWAY

    x = _non_negative_number(v)
    if x > MAX_LEEWAY:
        raise ValueError(f"must be at most {MAX_LEEWAY:g} seconds")
    return x


def _address(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string `host:port`")
    split_address(v)
    return v


@dataclass(frozen=True, slots=True)
class Key:
    name: str  # dotted, as in the TOML file
    check: Check
    attr: str  # ServerConfig attribute, or `limits.x` / `tls.x`
    help: str
    kind: str  # how a text value (env, flag) is read: int, float, bool, str, list


KEYS: tuple[Key, ...] = (
    Key("listen", _address, "listen", "address to listen on, `host:port` (port 0: any)", "str"),
    Key("policies", _string, "policies", "directory of policy files (*.pdp), watched", "str"),
    Key("schema", _string, "schema", "attribute schema file to validate policies with", "str"),
    Key("workers", _positive_int, "workers", "processes sharing the port (SO_REUSEPORT)", "int"),
    Key(
        "threads",
        _positive_int,
        "threads",
        "threads per process for calls that may wait on I/O (store misses, credentials)",
        "int",
    ),
    Key("grace_seconds", _positive_number, "grace_seconds", "SIGTERM: time to finish", "float"),
    Key(
        "log_level",
        _one_of("debug", "info", "warning", "error"),
        "log_level",
        "debug, info, warning or error",
        "str",
    ),
    Key("store.url", _store_url, "store_url", "role bindings database URL", "str"),
    Key(
        "store.poll_interval",
        _positive_number,
        "store_poll_interval",
        "seconds between checks of the store's revision (PostgreSQL also notifies)",
        "float",
    ),
    Key(
        "store.max_staleness",
        _positive_number,
        "store_max_staleness",
        "seconds cached bindings still answer while the store is unreachable",
        "float",
    ),
    Key(
        "store.bindings_file",
        _string,
        "bindings_file",
        "bindings YAML kept in memory instead of the database (watched)",
        "str",
    ),
    Key("reload.enabled", _bool, "reload_enabled", "reload policies when files change", "bool"),
    Key(
        "reload.debounce_ms",
        _positive_int,
        "reload_debounce_ms",
        "wait for changes to settle this long before reloading",
        "int",
    ),
    Key(
        "audit.sink",
        _one_of(*SINKS),
        "audit.sink",
        'where decision records go: "jsonl" (files, the default), "sql", or "none"',
        "str",
    ),
    Key(
        "audit.path",
        _string,
        "audit.path",
        "jsonl: the audit directory; empty: pdp-audit/ next to the SQLite store or bindings file",
        "str",
    ),
    Key("audit.url", _audit_url, "audit.url", "sql: database URL of the audit table", "str"),
    Key("audit.table", _string, "audit.table", "sql: the audit table's name", "str"),
    Key(
        "audit.mode",
        _one_of(*MODES),
        "audit.mode",
        '"durable": answer once the record is stored; "buffered": answer at once',
        "str",
    ),
    Key(
        "audit.flush_interval",
        _positive_number,
        "audit.flush_interval",
        "buffered: seconds a record waits at most before it is written",
        "float",
    ),
    Key(
        "audit.durable_timeout",
        _positive_number,
        "audit.durable_timeout",
        "durable: seconds a call's record may wait to be written before the call is "
        "denied (a write already under way is waited for)",
        "float",
    ),
    Key(
        "audit.sample_allowed",
        _share,
        "audit.sample_allowed",
        "share of allowed decisions recorded (0 to 1); denials are always recorded",
        "float",
    ),
    Key(
        "audit.include",
        _sections,
        "audit.include",
        "attributes recorded: any of subject, action, resource, context",
        "list",
    ),
    Key(
        "audit.redact",
        _strings,
        "audit.redact",
        "attribute fields recorded as [redacted], e.g. subject.properties.email",
        "list",
    ),
    Key(
        "audit.max_bytes",
        _positive_int,
        "audit.max_bytes",
        "jsonl: start a new file before one grows past this",
        "int",
    ),
    Key(
        "audit.rotate_seconds",
        _positive_number,
        "audit.rotate_seconds",
        "jsonl: start a new file each period (86400: each UTC day)",
        "float",
    ),
    Key(
        "audit.chain",
        _string,
        "audit.chain",
        "this writer's chain name; empty: the host name (-w<N> for worker N)",
        "str",
    ),
    Key(
        "audit.buffer_limit",
        _positive_int,
        "audit.buffer_limit",
        "buffered: records kept while the sink fails; more are dropped and counted",
        "int",
    ),
    Key(
        "limits.max_message_bytes",
        _positive_int,
        "limits.max_message_bytes",
        "largest request message",
        "int",
    ),
    Key("limits.max_batch", _positive_int, "limits.max_batch", "evaluations (or actions)", "int"),
    Key("limits.max_depth", _positive_int, "limits.max_depth", "attribute nesting depth", "int"),
    Key(
        "limits.max_attributes_bytes",
        _positive_int,
        "limits.max_attributes_bytes",
        "encoded size of one properties or context object",
        "int",
    ),
    Key(
        "limits.max_string_length",
        _positive_int,
        "limits.max_string_length",
        "characters in any string (ids, names, attribute keys and values)",
        "int",
    ),
    Key(
        "limits.max_ancestors",
        _non_negative_int,
        "limits.max_ancestors",
        "entries in resource.ancestors",
        "int",
    ),
    Key(
        "limits.max_concurrent_rpcs",
        _positive_int,
        "limits.max_concurrent_rpcs",
        "calls in progress per process; more get RESOURCE_EXHAUSTED",
        "int",
    ),
    Key("tls.cert", _string, "tls.cert", "server certificate chain (PEM); enables TLS", "str"),
    Key("tls.key", _string, "tls.key", "server private key (PEM)", "str"),
    Key(
        "tls.client_ca",
        _string,
        "tls.client_ca",
        "CA bundle (PEM) for client certificates; requires them (mutual TLS)",
        "str",
    ),
    Key(
        "tls.allowed_callers",
        _strings,
        "tls.allowed_callers",
        "client certificate identities (SAN or CN) that may ask; empty: any",
        "list",
    ),
    Key(
        "tls.allow_plaintext",
        _bool,
        "tls.allow_plaintext",
        "allow plaintext on a non-loopback address",
        "bool",
    ),
    Key(
        "envoy.enabled",
        _bool,
        "envoy.enabled",
        "serve envoy.service.auth.v3.Authorization/Check on the same port",
        "bool",
    ),
    Key(
        "envoy.routes",
        _string,
        "envoy.routes",
        "route table file; empty: routes.yaml in the policies directory (reloaded with them)",
        "str",
    ),
    Key(
        "envoy.remove_headers",
        _header_names,
        "envoy.remove_headers",
        "headers removed before the request goes upstream on allow, e.g. authorization",
        "list",
    ),
    Key(
        "envoy.subject_header",
        _header_name,
        "envoy.subject_header",
        "header telling the upstream the subject (`type:id`)",
        "str",
    ),
    Key(
        "envoy.decision_header",
        _header_name,
        "envoy.decision_header",
        "header carrying the decision id (allow and deny)",
        "str",
    ),
    Key("envoy.realm", _string, "envoy.realm", "realm of WWW-Authenticate: Bearer on 401", "str"),
    Key(
        "envoy.context_headers",
        _header_names,
        "envoy.context_headers",
        "headers policies see in context.http.headers; empty: all but credentials",
        "list",
    ),
    Key(
        "identity.order",
        _kinds,
        "identity.order",
        "which credential counts when several kinds are sent",
        "list",
    ),
    Key(
        "identity.jwt.issuer",
        _string,
        "identity.jwt.issuer",
        "the trusted token issuer (`iss`); empty: bearer tokens are not accepted",
        "str",
    ),
    Key(
        "identity.jwt.audiences",
        _strings,
        "identity.jwt.audiences",
        "accepted `aud` values (at least one)",
        "list",
    ),
    Key(
        "identity.jwt.algorithms",
        _algorithms,
        "identity.jwt.algorithms",
        "allowed signature algorithms (asymmetric only)",
        "list",
    ),
    Key(
        "identity.jwt.jwks_file",
        _string,
        "identity.jwt.jwks_file",
        "the issuer's key set (JWKS) in a file",
        "str",
    ),
    Key(
        "identity.jwt.jwks_url",
        _string,
        "identity.jwt.jwks_url",
        "the issuer's key set URL (https; http only on loopback)",
        "str",
    ),
    Key(
        "identity.jwt.jwks_ttl",
        _positive_number,
        "identity.jwt.jwks_ttl",
        "seconds the key set is used before it is fetched again",
        "float",
    ),
    Key(
        "identity.jwt.jwks_min_refresh",
        _refresh_interval,
        "identity.jwt.jwks_min_refresh",
        "at most one fetch per this many seconds (unknown kids trigger one)",
        "float",
    ),
    Key(
        "identity.jwt.leeway",
        _leeway,
        "identity.jwt.leeway",
        "seconds of clock skew allowed for exp, nbf and iat",
        "float",
    ),
    Key(
        "identity.jwt.subject_claim",
        _string,
        "identity.jwt.subject_claim",
        "claim (dotted path) holding the subject id",
        "str",
    ),
    Key(
        "identity.jwt.subject_type",
        _string,
        "identity.jwt.subject_type",
        "the subject type of token holders",
        "str",
    ),
    Key(
        "identity.jwt.type_claim",
        _string,
        "identity.jwt.type_claim",
        "claim holding the subject type instead (needs allowed_types)",
        "str",
    ),
    Key(
        "identity.jwt.allowed_types",
        _strings,
        "identity.jwt.allowed_types",
        "subject types type_claim may name",
        "list",
    ),
    Key(
        "identity.jwt.token_types",
        _strings,
        "identity.jwt.token_types",
        'accepted `typ` headers, e.g. ["at+jwt"] (RFC 9068); empty: any',
        "list",
    ),
    Key(
        "identity.jwt.scopes_claim",
        _string,
        "identity.jwt.scopes_claim",
        "claim holding the scopes (context.authn.scopes); empty: none",
        "str",
    ),
    Key(
        "identity.jwt.properties",
        _claim_map,
        "identity.jwt.properties",
        'subject properties from claims: {tenant = "org.tenant"}',
        "map",
    ),
    Key(
        "identity.jwt.revocation_refresh",
        _positive_number,
        "identity.jwt.revocation_refresh",
        "seconds between reads of the revoked-token list (`pdp tokens revoke`)",
        "float",
    ),
    Key(
        "identity.apikeys.enabled",
        _bool,
        "identity.apikeys.enabled",
        "accept API keys (`pdp apikeys create`) from the store",
        "bool",
    ),
    Key(
        "identity.apikeys.pepper_file",
        _string,
        "identity.apikeys.pepper_file",
        "file with the API key pepper; empty: $PDP_APIKEY_PEPPER",
        "str",
    ),
    Key(
        "identity.apikeys.header",
        _header_name,
        "identity.apikeys.header",
        "header carrying an API key",
        "str",
    ),
    Key(
        "identity.apikeys.in_bearer",
        _bool,
        "identity.apikeys.in_bearer",
        "accept `Authorization: Bearer pdp_...` API keys too",
        "bool",
    ),
    Key(
        "identity.sessions.enabled",
        _bool,
        "identity.sessions.enabled",
        "accept session cookies (sessions in the store)",
        "bool",
    ),
    Key(
        "identity.sessions.cookie",
        _cookie_name,
        "identity.sessions.cookie",
        "name of the session cookie",
        "str",
    ),
    Key(
        "identity.sessions.idle_timeout",
        _non_negative_number,
        "identity.sessions.idle_timeout",
        "seconds unused after which any session is refused; 0: each session's own",
        "float",
    ),
    Key(
        "identity.sessions.renew_after",
        _positive_number,
        "identity.sessions.renew_after",
        "seconds between writes of a session's last use (rolling idle renewal)",
        "float",
    ),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}


def env_name(key: str) -> str:
    """`limits.max_batch` → `PDP_LIMITS_MAX_BATCH`."""
    return "PDP_" + key.replace(".", "_").upper()


def defaults() -> dict[str, Any]:
    """Every key's default value, as the TOML file would spell it."""
    cfg = ServerConfig()
    return {k.name: value_of(cfg, k.attr) for k in KEYS}


def effective_values(cfg: ServerConfig) -> dict[str, Any]:
    """Every key's value as `--print-config` shows it: what runs, readable from anywhere.

    Relative paths, and the database paths of SQLite URLs, are made absolute (the
    server takes them relative to the working directory), so the printed file means
    the same wherever it is put; an empty `audit.path` of the jsonl sink is the
    directory it writes. Passwords in URLs are still there: redact before printing.
    """
    cwd = Path.cwd()
    out: dict[str, Any] = {}
    for key in KEYS:
        value = value_of(cfg, key.attr)
        if key.name in _PATH_KEYS and value:
            value = str(cwd / value)
        elif key.name in _DATABASE_URL_KEYS:
            value = sqlite_url_relative_to(value, cwd)
        elif key.kind == "float":  # a default such as 86400 reads back as 86400.0
            value = float(value)
        out[key.name] = value
    if cfg.audit.sink == "jsonl" and not cfg.audit.path:
        out["audit.path"] = str(cwd / default_directory(cfg.store_url, cfg.bindings_file))
    return out


def value_of(cfg: ServerConfig, attr: str) -> Any:
    """The value of dotted attribute `attr` (e.g. `limits.max_batch`) of `cfg`."""
    obj: Any = cfg
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, Mapping):
        return dict(obj)
    return list(obj) if isinstance(obj, tuple) else obj


# --- reading each source -----------------------------------------------------------------


def read_file(path: str | Path) -> dict[str, object]:
    """A TOML config file flattened to dotted keys; unknown keys are errors."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    flat: dict[str, object] = {}
    unknown: list[str] = []
    _flatten(data, "", flat, unknown)
    if unknown:  # every one at once: a file is fixed in one go, not one run per key
        raise ConfigError("\n".join(f"{name}: {k}: {_unknown(k)}" for k in unknown))
    return flat


def _flatten(
    data: Mapping[str, Any], prefix: str, out: dict[str, object], unknown: list[str]
) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in KEYS_BY_NAME:
            if not any(k.startswith(dotted + ".") for k in KEYS_BY_NAME):
                unknown.append(dotted)
            else:
                _flatten(value, dotted + ".", out, unknown)
        elif dotted not in KEYS_BY_NAME:
            unknown.append(dotted)
        else:
            out[dotted] = value


def _unknown(key: str) -> str:
    hint = did_you_mean(key, KEYS_BY_NAME)
    return "unknown setting" + (f"; {hint}" if hint else "")


def parse_text(key: Key, text: str) -> object:
    """A value given as text (environment, `--set`) in the key's type; else the text.

    A list is `["a", "b"]` (TOML or JSON; `[a, b]` too, as a shell leaves it after
    removing the quotes) or `a,b`; a table is `{a = "x"}` (or JSON) or `a=x,b=y`.
    ValueError when the text starts as a list or table and is not one.
    """
    t = text.strip()
    if key.kind == "int":
        try:
            return int(t)
        except ValueError:
            return text
    if key.kind == "float":
        try:
            return float(t)
        except ValueError:
            return text
    if key.kind == "bool":
        low = t.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return text
    if key.kind == "list":
        if t.startswith("["):
            return _literal(t, list, '["a", "b"] or a,b')
        return [s.strip() for s in t.split(",") if s.strip()]
    if key.kind == "map":  # `tenant=org.tenant,dept=department`
        if t.startswith("{"):
            return _literal(t, dict, '{a = "x.y"} or a=x.y')
        pairs = [p.partition("=") for p in t.split(",") if p.strip()]
        if all(sep for _, sep, _ in pairs):
            return {k.strip(): v.strip() for k, _, v in pairs}
        return text
    return text


def _literal(text: str, kind: type, example: str) -> object:
    """`text` read as a TOML value (an inline array or table) or as JSON, of type `kind`."""
    try:
        doc = tomllib.loads(f"v = {text}")
        if doc.keys() == {"v"} and isinstance(doc["v"], kind):
            return doc["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        value = json.loads(text)
        if isinstance(value, kind):
            return value
    except ValueError:
        pass
    inner = text[1:-1] if kind is list and text.endswith("]") else None
    if inner is not None and not any(c in inner for c in "[]\"'{}"):
        return [s.strip() for s in inner.split(",") if s.strip()]  # the shell ate the quotes
    noun = "list" if kind is list else "table"
    raise ValueError(f"not a valid {noun}, got {_show(text)}; write {example}")


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[str, object]]:
    """Settings from `PDP_*` variables: key → (variable name, value)."""
    out: dict[str, tuple[str, object]] = {}
    for key in KEYS:
        name = env_name(key.name)
        if name in environ:
            try:
                out[key.name] = (name, parse_text(key, environ[name]))
            except ValueError as exc:
                raise ConfigError(f"{name}: {key.name}: {exc}") from None
    # The store CLI's variable (`pdp db`, `pdp bindings`) names the same database.
    if "store.url" not in out and "PDP_DB_URL" in environ:
        out["store.url"] = ("PDP_DB_URL", environ["PDP_DB_URL"])
    return out


# `PDP_*` variables that are not server settings but mean something to `pdp` commands.
OTHER_VARIABLES = frozenset(
    {"PDP_DB_URL", "PDP_APIKEY_PEPPER", "PDP_AUDIT_DB", "PDP_AUDIT_LOG", "PDP_ACTOR"}
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each `PDP_*` variable that names no setting (a typo would be ignored)."""
    known = {env_name(k.name) for k in KEYS} | OTHER_VARIABLES
    lines = []
    for name in sorted(environ):
        if name.startswith("PDP_") and name not in known:
            hint = did_you_mean(name, known)
            lines.append(f"{name}: not a setting, ignored" + (f"; {hint}" if hint else ""))
    return lines


def parse_set(items: list[str]) -> dict[str, object]:
    """`--set key=value` flags → key → value."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"--set {item}: write `--set key=value`, e.g. limits.max_batch=500")
        if name not in KEYS_BY_NAME:
            raise ConfigError(f"--set {name}: {_unknown(name)}")
        try:
            out[name] = parse_text(KEYS_BY_NAME[name], text)
        except ValueError as exc:
            raise ConfigError(f"--set: {name}: {exc}") from None
    return out


# --- putting it together ------------------------------------------------------------------


PEPPER_ENV = "PDP_APIKEY_PEPPER"  # the same variable `pdp apikeys` reads


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> ServerConfig:
    """The effective settings: `flags` > `environ` > the file at `path` > defaults.

    Relative paths in a config file, the database paths of SQLite URLs included, are
    taken relative to the file's directory, so a config works from any working
    directory; flags and environment are relative to the working directory.
    `flag_names` maps a key to the flag that set it, for messages (default `--set`).
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    if path is not None:
        base = Path(path).parent
        for k, v in read_file(path).items():
            if k in _PATH_KEYS and isinstance(v, str) and v and not Path(v).is_absolute():
                v = str(base / v)
            elif k in _DATABASE_URL_KEYS and isinstance(v, str):
                v = sqlite_url_relative_to(v, base)
            values[k] = v
            sources[k] = str(path)
    for k, (name, v) in read_env(env).items():
        values[k], sources[k] = v, name
    for k, v in (flags or {}).items():
        if k not in KEYS_BY_NAME:
            raise ConfigError(f"--{k}: {_unknown(k)}")
        values[k], sources[k] = v, (flag_names or {}).get(k, "--set")
    checked: dict[str, Any] = {}
    for k, v in values.items():
        try:
            checked[k] = KEYS_BY_NAME[k].check(v)
        except ValueError as exc:
            got = "" if isinstance(exc, _ValueShown) else f", got {_show(v)}"
            raise ConfigError(f"{sources[k]}: {k}: {exc}{got}") from None
    return _build(checked, sources, env)


_PATH_KEYS = frozenset(
    {
        "policies",
        "schema",
        "store.bindings_file",
        "tls.cert",
        "tls.key",
        "tls.client_ca",
        "audit.path",
        "envoy.routes",
        "identity.jwt.jwks_file",
        "identity.apikeys.pepper_file",
    }
)


# Keys whose value is a database URL: a SQLite file in one is a path like the above.
_DATABASE_URL_KEYS = frozenset(k.name for k in KEYS if k.check in (_store_url, _audit_url))

# SQLAlchemy's URL grammar (`sqlalchemy.engine.url._parse_url`) up to the database part,
# to find where that part starts in the text.
_URL_DATABASE = re.compile(
    r"[\w+]+://(?:[^:/]*(?::[^@]*)?@)?(?:(?:\[[^/?]+\]|[^/:?]+)?(?::[^/?]*)?)?/(?P<db>[^?]*)"
)


def sqlite_url_relative_to(url: str, base: Path) -> str:
    """`url` with the relative file path of a SQLite database taken relative to `base`.

    Any other URL is returned as it is: not SQLite, in memory (`sqlite://`,
    `sqlite:///:memory:`), an absolute path, a `file:` URI filename, or not a URL at
    all (it is reported when checked). Only the path changes: the rest of the text,
    a password included, is kept as written (and never shown here).
    """
    if not url.startswith("sqlite") or base == Path("."):
        return url
    from sqlalchemy.engine import make_url  # only for SQLite URLs
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        return url
    db = parsed.database
    uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
    if (
        parsed.get_backend_name() != "sqlite"
        or not db
        or db == ":memory:"
        or uri
        or db.startswith("file:")
        or Path(db).is_absolute()
    ):
        return url
    want = str(base / db)
    m = _URL_DATABASE.match(url)
    if m is not None:  # keep the text as written: put the directory in front of the path
        prefix = str(base).replace("%", "%25").replace("?", "%3F")
        rebased = f"{url[: m.start('db')]}{prefix}/{url[m.start('db') :]}"
        try:
            if str(Path(make_url(rebased).database or "")) == want:
                return rebased
        except (ArgumentError, ValueError):
            pass  # SQLAlchemy writes it, below
    return parsed.set(database=want).render_as_string(hide_password=False)


def _show(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


_GROUPS = (
    "limits",
    "tls",
    "audit",
    "envoy",
    "identity.jwt",
    "identity.apikeys",
    "identity.sessions",
    "identity",
)


def _build(
    values: Mapping[str, Any], sources: Mapping[str, str], environ: Mapping[str, str]
) -> ServerConfig:
    groups: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
    top: dict[str, Any] = {}
    for name, value in values.items():
        attr = KEYS_BY_NAME[name].attr
        group = next((g for g in _GROUPS if attr.startswith(g + ".")), None)
        if group is None:
            top[attr] = value
        else:
            groups[group][attr.removeprefix(group + ".")] = value
    apikeys = groups["identity.apikeys"]
    if apikeys.get("enabled"):
        apikeys["pepper"] = _pepper(apikeys.get("pepper_file", ""), sources, environ)
    identity = IdentityConfig(
        **groups["identity"],
        jwt=JwtConfig(**groups["identity.jwt"]),
        apikeys=ApiKeysConfig(**apikeys),
        sessions=SessionsConfig(**groups["identity.sessions"]),
    )
    cfg = ServerConfig(
        **top,
        limits=Limits(**groups["limits"]),
        tls=TlsConfig(**groups["tls"]),
        audit=AuditSettings(**groups["audit"]),
        envoy=EnvoyConfig(**groups["envoy"]),
        identity=identity,
    )
    _check_together(cfg, sources)
    return cfg


def _pepper(path: str, sources: Mapping[str, str], environ: Mapping[str, str]) -> bytes:
    """The API key pepper from `identity.apikeys.pepper_file`, else $PDP_APIKEY_PEPPER."""
    from pdp.identity.apikeys import MIN_PEPPER_BYTES

    if path:
        where = f"{sources.get('identity.apikeys.pepper_file', 'defaults')}: "
        where += "identity.apikeys.pepper_file"
        try:
            pepper = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    else:
        where = f"{sources.get('identity.apikeys.enabled', 'defaults')}: identity.apikeys.enabled"
        if PEPPER_ENV not in environ:
            raise ConfigError(
                f"{where}: API keys need the pepper `pdp apikeys create` used: set "
                f"identity.apikeys.pepper_file or ${PEPPER_ENV}"
            )
        pepper = environ[PEPPER_ENV].encode("utf-8")
        where = f"${PEPPER_ENV}"
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ConfigError(
            f"{where}: the API key pepper is {len(pepper)} bytes; it must be at least "
            f"{MIN_PEPPER_BYTES}"
        )
    return pepper


def _check_together(cfg: ServerConfig, sources: Mapping[str, str]) -> None:
    """Rules that involve several keys."""

    def where(key: str) -> str:
        return sources.get(key, "defaults")

    tls = cfg.tls
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError(f"{where('tls.cert')}: tls.cert and tls.key: give both or neither")
    if tls.client_ca and not tls.cert:
        raise ConfigError(
            f"{where('tls.client_ca')}: tls.client_ca: mutual TLS needs tls.cert and tls.key"
        )
    if tls.allowed_callers and not tls.client_ca:
        raise ConfigError(
            f"{where('tls.allowed_callers')}: tls.allowed_callers: caller identities come from "
            "client certificates; set tls.client_ca too"
        )
    if not tls.cert and not tls.allow_plaintext and not is_loopback(cfg.host):
        raise ConfigError(
            f"{where('listen')}: listen: plaintext on `{cfg.host}`, which is not loopback; "
            "configure tls.cert and tls.key, or set tls.allow_plaintext = true"
        )
    if cfg.workers > 1 and cfg.port == 0:
        raise ConfigError(f"{where('workers')}: workers: several workers need a fixed port")
    if cfg.audit.sink == "sql" and not cfg.audit.url:
        raise ConfigError(f'{where("audit.sink")}: audit.url: the "sql" sink needs a database URL')
    _check_identity(cfg, where)
    try:
        cfg.audit.check()  # the redaction paths
    except ValueError as exc:
        key = "audit.redact" if "redact" in str(exc) else "audit.include"
        raise ConfigError(f"{where(key)}: {exc}") from None


def _check_identity(cfg: ServerConfig, where: Callable[[str], str]) -> None:
    """The `[envoy]` and `[identity]` rules that involve several keys."""
    jwt = cfg.identity.jwt
    if jwt.enabled:
        if not jwt.audiences:
            raise ConfigError(
                f"{where('identity.jwt.issuer')}: identity.jwt.audiences: name at least one "
                "audience the tokens must be for"
            )
        if bool(jwt.jwks_file) == bool(jwt.jwks_url):
            raise ConfigError(
                f"{where('identity.jwt.issuer')}: identity.jwt.jwks_file, identity.jwt.jwks_url: "
                "give exactly one place to get the issuer's keys from"
            )
        if jwt.jwks_url:
            from pdp.identity.jwks import check_jwks_url

            try:
                check_jwks_url(jwt.jwks_url)
            except ValueError as exc:
                raise ConfigError(
                    f"{where('identity.jwt.jwks_url')}: identity.jwt.jwks_url: {exc}"
                ) from None
        if jwt.type_claim and not jwt.allowed_types:
            raise ConfigError(
                f"{where('identity.jwt.type_claim')}: identity.jwt.allowed_types: "
                "type_claim needs the subject types it may name"
            )
        from pdp.identity.result import subject_problem

        problem = subject_problem(jwt.subject_type, "x")
        if problem:
            raise ConfigError(
                f"{where('identity.jwt.subject_type')}: identity.jwt.subject_type: {problem}"
            )
    env = cfg.envoy
    if env.enabled:
        routes = cfg.routes_path
        assert routes is not None
        if not routes.is_file():
            key = "envoy.routes" if env.routes else "envoy.enabled"
            raise ConfigError(
                f"{where(key)}: envoy.routes: no route table at {routes}; write one "
                "(docs/envoy.md) or set envoy.routes"
            )
        if '"' in env.realm or "\\" in env.realm or not env.realm.isprintable():
            raise ConfigError(
                f"{where('envoy.realm')}: envoy.realm: printable text without quotes or backslashes"
            )


def split_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be `host:port`, e.g. 127.0.0.1:50051")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # ASCII digits only: `isdigit` also takes `²` (int() fails) and `５` (int() reads it,
    # gRPC does not).
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError("must be `host:port` with a port from 0 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; anything else (0.0.0.0 included) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
