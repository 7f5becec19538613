"""`pdp serve` settings: precedence, paths relative to the file, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.server.config import ConfigError, load_config, parse_set


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "conf" / "pdp.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults() -> None:
    cfg = load_config(None, environ={})
    assert cfg.listen == "127.0.0.1:50051"
    assert cfg.store_url == "sqlite:///pdp.db"
    assert cfg.limits.max_batch == 1000 and cfg.workers == 1
    assert not cfg.tls.enabled


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[limits]\nmax_batch = 10\nmax_depth = 4\nmax_string_length = 99\n"
        "[reload]\nenabled = false\n",
    )
    env = {"PDP_LIMITS_MAX_BATCH": "20", "PDP_LIMITS_MAX_DEPTH": "5"}
    cfg = load_config(path, environ=env, flags={"limits.max_batch": 30})
    assert cfg.limits.max_batch == 30  # flag
    assert cfg.limits.max_depth == 5  # environment
    assert cfg.limits.max_string_length == 99  # file
    assert cfg.limits.max_ancestors == 64  # default
    assert cfg.reload_enabled is False


def test_paths_in_a_file_are_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'policies = "pol"\n[store]\nbindings_file = "/abs/b.yaml"\n')
    cfg = load_config(path, environ={})
    assert cfg.policies == str(tmp_path / "conf" / "pol")
    assert cfg.bindings_file == "/abs/b.yaml"


def test_store_cli_variable_is_honoured() -> None:
    assert load_config(None, environ={"PDP_DB_URL": "sqlite:///x.db"}).store_url == "sqlite:///x.db"
    env = {"PDP_DB_URL": "sqlite:///x.db", "PDP_STORE_URL": "sqlite:///y.db"}
    assert load_config(None, environ=env).store_url == "sqlite:///y.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[limits]\nmax_batch = "ten"\n',
            'limits.max_batch: must be a positive integer, got "ten"',
        ),
        ("[limits]\nmax_batch = 0\n", "limits.max_batch: must be a positive integer, got 0"),
        (
            "[limits]\nmax_bach = 1\n",
            "limits.max_bach: unknown setting; did you mean `limits.max_batch`?",
        ),
        ("[nope]\nx = 1\n", "nope: unknown setting"),
        (
            'listen = "nowhere"\n',
            'listen: must be `host:port`, e.g. 127.0.0.1:50051, got "nowhere"',
        ),
        (
            'log_level = "loud"\n',
            'log_level: must be one of "debug", "info", "warning", "error", got "loud"',
        ),
        ("[tls]\nallow_plaintext = 1\n", "tls.allow_plaintext: must be true or false, got 1"),
        ('[tls]\ncert = "c.pem"\n', "tls.cert and tls.key: give both or neither"),
        ("workers = 2\n", "workers: several workers need a fixed port"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    if text.startswith("workers"):
        text += 'listen = "127.0.0.1:0"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == f"{path}: {message}"


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match=r"pdp.toml: not valid TOML: .*line 1"):
        load_config(path, environ={})


def test_set_flags() -> None:
    assert parse_set(["limits.max_batch=5", "tls.allowed_callers=a, b"]) == {
        "limits.max_batch": 5,
        "tls.allowed_callers": ["a", "b"],
    }
    with pytest.raises(ConfigError, match="write `--set key=value`"):
        parse_set(["limits.max_batch"])
