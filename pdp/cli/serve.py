"""`pdp serve`: run the gRPC decision service."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.markup import escape

from pdp.cli.common import EXIT_ERROR, EXIT_OK, err, fail, out
from pdp.server.config import (
    KEYS,
    ConfigError,
    ServerConfig,
    defaults,
    effective_values,
    env_name,
    load_config,
    parse_set,
    unknown_variables,
)

# Flags with a name of their own: flag → (config key, help). Every key can also be set
# with `--set key=value` or its environment variable.
FLAGS: dict[str, tuple[str, str]] = {
    "--listen": ("listen", "address to listen on, e.g. 127.0.0.1:50051 (port 0: any free)"),
    "--policies": ("policies", "directory of policy files; watched and hot-reloaded"),
    "--schema": ("schema", "attribute schema file to validate the policies with"),
    "--bindings-file": (
        "store.bindings_file",
        "serve role bindings from this YAML file (in memory) instead of the database",
    ),
    "--store-url": ("store.url", "role bindings database URL, e.g. sqlite:///pdp.db"),
    "--workers": ("workers", "processes sharing the port (SO_REUSEPORT); default 1"),
    "--log-level": ("log_level", "debug, info, warning or error"),
}
# Other spellings of a flag: `--db` is what every store command of `pdp` calls it.
ALIASES: dict[str, tuple[str, ...]] = {"--store-url": ("--db",)}


def _epilog() -> str:
    lines = [
        "settings (config file key, environment variable, default):",
    ]
    values = defaults()
    for key in KEYS:
        default = values[key.name]
        shown = _toml_value(list(default) if isinstance(default, tuple) else default)
        lines.append(f"  {key.name:<28} {env_name(key.name):<30} {shown}")
        lines.append(f"      {key.help}")
    lines += [
        "",
        "precedence: flags > environment > config file > defaults. Relative paths in a",
        "config file, and the file of a SQLite URL (sqlite:///pdp.db), are relative to",
        "the file; in flags and the environment, to the working directory.",
        "",
        'lists as text (--set, environment): ["a", "b"] (TOML or JSON; quote it for the',
        'shell) or a,b; tables: {a = "x.y"} or a=x.y.',
        "",
        "--print-config prints absolute paths and SQLite URLs, so its output can be used",
        "as a config file from anywhere; database passwords are printed as ***.",
        "Documented in docs/server.md.",
        "",
        "health: grpc.health.v1 reports NOT_SERVING until the policies and the role",
        "bindings are loaded, and again while draining after SIGTERM.",
        "",
        "exit codes: 0 stopped by SIGTERM/SIGINT after draining; 1 could not start;",
        "2 bad settings or usage",
    ]
    return "\n".join(lines)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the gRPC decision service",
        description="Serve decisions over gRPC (pdp.v1.DecisionService), with health "
        "checking, reflection and hot reload of the policies.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (see below)")
    for flag, (key, text) in FLAGS.items():
        kind: Any = int if key == "workers" else str
        metavar = {"listen": "HOST:PORT", "workers": "N", "log_level": "LEVEL"}.get(key)
        p.add_argument(
            flag,
            *ALIASES.get(flag, ()),
            dest=key,
            metavar=metavar or ("URL" if key == "store.url" else "PATH"),
            type=kind,
            help=text,
        )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="set_",
        help="any setting below, e.g. --set limits.max_batch=500 or "
        '--set \'audit.include=["subject", "resource"]\' (repeatable)',
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML and exit",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags: dict[str, object] = {}
    names: dict[str, str] = {}
    try:
        for k, v in parse_set(args.set_).items():
            flags[k], names[k] = v, "--set"
        for flag, (key, _) in FLAGS.items():
            value = getattr(args, key, None)
            if value is not None:
                flags[key], names[key] = value, flag
        cfg = load_config(args.config, environ=os.environ, flags=flags, flag_names=names)
    except ConfigError as exc:
        fail(str(exc))
        return 2
    for line in unknown_variables(os.environ):
        err.print(f"[yellow]warning[/]: {escape(line)}", markup=True)
    if args.print_config:
        out.print(_toml(cfg), markup=False, highlight=False)
        return EXIT_OK
    if cfg.workers > 1:
        from pdp.server.workers import run_workers

        return run_workers(cfg)
    from pdp.server.app import serve

    code = serve(cfg)
    return EXIT_OK if code == 0 else EXIT_ERROR


def _toml(cfg: ServerConfig) -> str:
    """The settings as a config file that means the same from any directory: absolute
    paths and SQLite URLs, the audit directory that is written (`effective_values`)."""
    from pdp.store.config import redact

    sections: dict[str, list[str]] = {}
    for name, value in effective_values(cfg).items():
        section, _, leaf = name.rpartition(".")
        if isinstance(value, str) and leaf.endswith("url"):
            value = redact(value) if value else value  # passwords are never printed
        line = f"{leaf} = {_toml_value(value)}"
        if name == "audit.chain" and not value:
            line += f"  # {_default_chain(cfg.workers)}"
        sections.setdefault(section, []).append(line)
    parts = ["\n".join(sections.pop(""))]
    parts += [f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()]
    return "\n\n".join(parts)


def _default_chain(workers: int) -> str:
    """What an empty `audit.chain` means. Not printed as the value: each of several
    workers writes a chain of its own, and a host name would be wrong on another host."""
    from pdp.audit.recorder import default_chain

    if workers == 1:
        return f'empty: the host name, here "{default_chain()}"'
    first, last = default_chain(0), default_chain(workers - 1)
    return f'empty: one chain per worker, here "{first}" to "{last}"'


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)
