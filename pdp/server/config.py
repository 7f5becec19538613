"""`pdp serve` settings: one table of keys, read from TOML, environment and flags.

Precedence: flags > environment (`PDP_<SECTION>_<KEY>`, e.g. `PDP_LIMITS_MAX_BATCH`)
> the config file > defaults. Every value is checked by the same code whatever its
source, and a bad one is reported as one line naming where it came from and the key:

    config.toml: limits.max_batch: must be a positive integer, got "ten"
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdp.audit.record import SECTIONS
from pdp.audit.recorder import SINKS, AuditSettings
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


def _positive_number(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ValueError("must be a positive number")
    return float(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _string(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _strings(v: object) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(s, str) and s for s in v):
        raise ValueError("must be a list of non-empty strings")
    return tuple(v)


def _share(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise ValueError("must be a number from 0 to 1")
    return float(v)


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
    Key("threads", _positive_int, "threads", "threads per process answering calls", "int"),
    Key("grace_seconds", _positive_number, "grace_seconds", "SIGTERM: time to finish", "float"),
    Key(
        "log_level",
        _one_of("debug", "info", "warning", "error"),
        "log_level",
        "debug, info, warning or error",
        "str",
    ),
    Key("store.url", _string, "store_url", "role bindings database URL", "str"),
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
    Key("audit.url", _string, "audit.url", "sql: database URL of the audit table", "str"),
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
        "durable: seconds a call waits for its record before it is denied",
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
)
KEYS_BY_NAME = {k.name: k for k in KEYS}


def env_name(key: str) -> str:
    """`limits.max_batch` → `PDP_LIMITS_MAX_BATCH`."""
    return "PDP_" + key.replace(".", "_").upper()


def defaults() -> dict[str, Any]:
    """Every key's default value, as the TOML file would spell it."""
    cfg = ServerConfig()
    return {k.name: value_of(cfg, k.attr) for k in KEYS}


def value_of(cfg: ServerConfig, attr: str) -> Any:
    """The value of dotted attribute `attr` (e.g. `limits.max_batch`) of `cfg`."""
    obj: Any = cfg
    for part in attr.split("."):
        obj = getattr(obj, part)
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
    _flatten(data, "", flat, name)
    return flat


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, object], source: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in KEYS_BY_NAME:
            if not any(k.startswith(dotted + ".") for k in KEYS_BY_NAME):
                raise ConfigError(f"{source}: {dotted}: {_unknown(dotted)}")
            _flatten(value, dotted + ".", out, source)
        elif dotted not in KEYS_BY_NAME:
            raise ConfigError(f"{source}: {dotted}: {_unknown(dotted)}")
        else:
            out[dotted] = value


def _unknown(key: str) -> str:
    hint = did_you_mean(key, KEYS_BY_NAME)
    return "unknown setting" + (f"; {hint}" if hint else "")


def parse_text(key: Key, text: str) -> object:
    """A value given as text (environment, `--set`) in the key's type; else the text."""
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
        return [s.strip() for s in t.split(",") if s.strip()]
    return text


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[str, object]]:
    """Settings from `PDP_*` variables: key → (variable name, value)."""
    out: dict[str, tuple[str, object]] = {}
    for key in KEYS:
        name = env_name(key.name)
        if name in environ:
            out[key.name] = (name, parse_text(key, environ[name]))
    # The store CLI's variable (`pdp db`, `pdp bindings`) names the same database.
    if "store.url" not in out and "PDP_DB_URL" in environ:
        out["store.url"] = ("PDP_DB_URL", environ["PDP_DB_URL"])
    return out


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
        out[name] = parse_text(KEYS_BY_NAME[name], text)
    return out


# --- putting it together ------------------------------------------------------------------


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> ServerConfig:
    """The effective settings: `flags` > `environ` > the file at `path` > defaults.

    Relative paths in a config file are taken relative to the file's directory, so a
    config works from any working directory; flags and environment are relative to
    the working directory. `flag_names` maps a key to the flag that set it, for
    messages (default `--set`).
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    if path is not None:
        base = Path(path).parent
        for k, v in read_file(path).items():
            if k in _PATH_KEYS and isinstance(v, str) and v and not Path(v).is_absolute():
                v = str(base / v)
            values[k] = v
            sources[k] = str(path)
    for k, (name, v) in read_env(os.environ if environ is None else environ).items():
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
            raise ConfigError(f"{sources[k]}: {k}: {exc}, got {_show(v)}") from None
    return _build(checked, sources)


_PATH_KEYS = frozenset(
    {
        "policies",
        "schema",
        "store.bindings_file",
        "tls.cert",
        "tls.key",
        "tls.client_ca",
        "audit.path",
    }
)


def _show(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _build(values: Mapping[str, Any], sources: Mapping[str, str]) -> ServerConfig:
    top: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    audit: dict[str, Any] = {}
    for name, value in values.items():
        attr = KEYS_BY_NAME[name].attr
        if attr.startswith("limits."):
            limits[attr.removeprefix("limits.")] = value
        elif attr.startswith("tls."):
            tls[attr.removeprefix("tls.")] = value
        elif attr.startswith("audit."):
            audit[attr.removeprefix("audit.")] = value
        else:
            top[attr] = value
    cfg = ServerConfig(
        **top, limits=Limits(**limits), tls=TlsConfig(**tls), audit=AuditSettings(**audit)
    )
    _check_together(cfg, sources)
    return cfg


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
    try:
        cfg.audit.check()  # the redaction paths
    except ValueError as exc:
        key = "audit.redact" if "redact" in str(exc) else "audit.include"
        raise ConfigError(f"{where(key)}: {exc}") from None


def split_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be `host:port`, e.g. 127.0.0.1:50051")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
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
