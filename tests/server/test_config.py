"""`pdp serve` settings: precedence, paths relative to the file, one-line errors."""

from __future__ import annotations

import re
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


def test_sqlite_urls_in_a_file_are_relative_to_it(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from pdp.audit.recorder import default_directory

    path = write(
        tmp_path,
        '[store]\nurl = "sqlite:///pdp.db"\n'
        '[audit]\nsink = "sql"\nurl = "sqlite:///data/audit.db?timeout=5"\n',
    )
    cfg = load_config(path, environ={})
    conf = tmp_path / "conf"
    assert cfg.store_url == f"sqlite:///{conf}/pdp.db"
    assert make_url(cfg.store_url).database == str(conf / "pdp.db")
    assert cfg.audit.url == f"sqlite:///{conf}/data/audit.db?timeout=5"
    # What follows the store follows it too: the default audit directory.
    assert default_directory(cfg.store_url) == conf / "pdp-audit"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",  # in memory
        "sqlite:///:memory:",
        "sqlite:////var/lib/pdp/pdp.db",  # absolute
        "sqlite:///file:pdp.db?mode=ro&uri=true",  # a URI filename, SQLite's own syntax
        "postgresql://pdp@db:5432/pdp",
    ],
)
def test_other_database_urls_in_a_file_are_kept_as_written(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[store]\nurl = "{url}"\n[audit]\nurl = "{url}"\n')
    cfg = load_config(path, environ={})
    assert (cfg.store_url, cfg.audit.url) == (url, url)


def test_sqlite_urls_from_flags_and_environment_are_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[store]\nurl = "sqlite:///file.db"\n')
    env = {"PDP_STORE_URL": "sqlite:///env.db"}
    assert load_config(path, environ=env).store_url == "sqlite:///env.db"
    assert load_config(path, environ={"PDP_DB_URL": "sqlite:///db.db"}).store_url == (
        "sqlite:///db.db"
    )
    flags = {"store.url": "sqlite:///flag.db", "audit.url": "sqlite:///a.db"}
    cfg = load_config(path, environ=env, flags=flags)
    assert (cfg.store_url, cfg.audit.url) == ("sqlite:///flag.db", "sqlite:///a.db")


def test_a_bad_sqlite_url_in_a_file_never_shows_its_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "sqlite://pdp:s3cret@/pdp.db"\n')
    with pytest.raises(ConfigError) as bad:
        load_config(path, environ={})
    assert "s3cret" not in str(bad.value)
    assert str(bad.value).startswith(f"{path}: store.url: `sqlite://pdp:***@")


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
        # Not finite: passes every range check, then breaks timers quietly.
        ("grace_seconds = inf\n", "grace_seconds: must be a positive number, got inf"),
        (
            "[store]\nmax_staleness = nan\n",
            "store.max_staleness: must be a positive number, got nan",
        ),
        (
            "[audit]\ndurable_timeout = nan\n",
            "audit.durable_timeout: must be a positive number, got nan",
        ),
        (
            'listen = "127.0.0.1:\u00b2"\n',
            'listen: must be `host:port` with a port from 0 to 65535, got "127.0.0.1:\u00b2"',
        ),
        (
            'listen = "127.0.0.1:\uff15\uff10"\n',
            'listen: must be `host:port` with a port from 0 to 65535, got "127.0.0.1:\uff15\uff10"',
        ),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    if text.startswith("workers"):
        text += 'listen = "127.0.0.1:0"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == f"{path}: {message}"


def test_every_unknown_key_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_bach = 1\nmax_dept = 2\n[nope]\nx = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value).splitlines() == [
        f"{path}: limits.max_bach: unknown setting; did you mean `limits.max_batch`?",
        f"{path}: limits.max_dept: unknown setting; did you mean `limits.max_depth`?",
        f"{path}: nope: unknown setting",
    ]


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


@pytest.mark.parametrize(
    "text",
    [
        '["subject","resource"]',  # TOML, as `--help` shows lists; JSON too
        "['subject', 'resource']",  # TOML literal strings
        '[\n  "subject",\n  "resource",\n]',
        "[subject, resource]",  # what the shell leaves of the first one, unquoted
        "subject,resource",
        " subject , resource ",
    ],
)
def test_lists_as_text_in_toml_json_or_with_commas(text: str) -> None:
    assert parse_set([f"audit.include={text}"]) == {"audit.include": ["subject", "resource"]}
    cfg = load_config(None, environ={"PDP_AUDIT_INCLUDE": text})
    assert cfg.audit.include == ("subject", "resource")


def test_lists_as_text_may_hold_commas_and_be_empty() -> None:
    assert parse_set(['tls.allowed_callers=["CN=a,O=b", "c"]', "audit.redact=[]"]) == {
        "tls.allowed_callers": ["CN=a,O=b", "c"],
        "audit.redact": [],
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('["subject","resource"', "audit.include: not a valid list"),  # unclosed
        ('["subject", resource]', "audit.include: not a valid list"),  # half quoted
        ('["subject"] x', "audit.include: not a valid list"),
        ('["subject"]\nx = 1', "audit.include: not a valid list"),  # no smuggled keys
        ('["subject", 1]', "audit.include: must be a list of non-empty strings"),
    ],
)
def test_a_malformed_list_names_the_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(None, environ={}, flags=parse_set([f"audit.include={text}"]))
    assert str(bad.value).startswith(f"--set: {where}")
    with pytest.raises(ConfigError) as bad:
        load_config(None, environ={"PDP_AUDIT_INCLUDE": text})
    assert str(bad.value).startswith(f"PDP_AUDIT_INCLUDE: {where}")
    assert 'write ["a", "b"] or a,b' in str(bad.value) or "must be" in where


@pytest.mark.parametrize(
    "text", ['{tenant = "org.tenant", dept = "d"}', '{"tenant": "org.tenant", "dept": "d"}']
)
def test_tables_as_text_in_toml_or_json(text: str) -> None:
    flags = parse_set([f"identity.jwt.properties={text}"])
    assert flags == {"identity.jwt.properties": {"tenant": "org.tenant", "dept": "d"}}
    with pytest.raises(ConfigError, match=r"^--set: identity.jwt.properties: not a valid table"):
        parse_set(['identity.jwt.properties={tenant = "org.tenant"'])


# --- [envoy] and [identity] -----------------------------------------------------------------

IDENTITY = """\
policies = "policies"

[envoy]
enabled = true
remove_headers = ["Authorization", "x-api-key"]

[identity.jwt]
issuer = "https://id.example.com"
audiences = ["docs-api"]
algorithms = ["ES256"]
token_types = ["at+jwt"]
jwks_file = "keys/jwks.json"
leeway = 10
properties = {tenant = "org.tenant"}

[identity.apikeys]
enabled = true
pepper_file = "pepper.txt"

[identity.sessions]
enabled = true
cookie = "sid"
idle_timeout = 900
"""


def _identity_files(tmp_path: Path) -> Path:
    path = write(tmp_path, IDENTITY)
    (path.parent / "policies").mkdir()
    (path.parent / "policies" / "routes.yaml").write_text("routes: []\n", encoding="utf-8")
    (path.parent / "pepper.txt").write_text("s" * 32 + "\n", encoding="utf-8")
    return path


def test_envoy_and_identity_settings(tmp_path: Path) -> None:
    path = _identity_files(tmp_path)
    cfg = load_config(path, environ={"PDP_IDENTITY_JWT_LEEWAY": "5"})
    base = path.parent
    assert cfg.envoy.enabled and cfg.routes_path == base / "policies" / "routes.yaml"
    assert cfg.envoy.remove_headers == ("authorization", "x-api-key")
    jwt = cfg.identity.jwt
    assert jwt.enabled and jwt.audiences == ("docs-api",) and jwt.algorithms == ("ES256",)
    assert jwt.jwks_file == str(base / "keys" / "jwks.json")  # relative to the file
    assert jwt.leeway == 5 and dict(jwt.properties) == {"tenant": "org.tenant"}
    assert jwt.token_types == ("at+jwt",)
    assert cfg.identity.apikeys.pepper == b"s" * 32  # read, whitespace stripped
    assert "pepper=" not in repr(cfg)  # the secret is never shown
    assert cfg.identity.sessions.cookie == "sid" and cfg.identity.sessions.idle_timeout == 900


@pytest.mark.parametrize(
    ("edit", "env", "message"),
    [
        (
            ('algorithms = ["ES256"]', 'algorithms = ["none"]'),
            {},
            "identity.jwt.algorithms: `none`",
        ),
        (('algorithms = ["ES256"]', 'algorithms = ["HS256"]'), {}, "HMAC are refused"),
        (('audiences = ["docs-api"]', "audiences = []"), {}, "identity.jwt.audiences: name"),
        (
            ('jwks_file = "keys/jwks.json"', 'jwks_url = "http://id.example.com/jwks"'),
            {},
            "identity.jwt.jwks_url: `http://id.example.com/jwks`",
        ),
        (
            ('jwks_file = "keys/jwks.json"', 'jwks_file = "a"\njwks_url = "https://x/jwks"'),
            {},
            "give exactly one place",
        ),
        (("leeway = 10", "leeway = 900"), {}, "identity.jwt.leeway: must be at most 300"),
        (
            ("leeway = 10", "jwks_min_refresh = 0"),
            {},
            "identity.jwt.jwks_min_refresh: must be a number of seconds, 1 or more",
        ),
        (('cookie = "sid"', 'cookie = "a b"'), {}, "identity.sessions.cookie: must be a cookie"),
        (
            ('remove_headers = ["Authorization", "x-api-key"]', 'remove_headers = [":path"]'),
            {},
            "envoy.remove_headers: must be an HTTP header name",
        ),
        (("idle_timeout = 900", "idle_timeout = -1"), {}, "identity.sessions.idle_timeout"),
        (('pepper_file = "pepper.txt"', ""), {}, "set identity.apikeys.pepper_file or $PDP_APIKEY"),
        (('pepper_file = "pepper.txt"', ""), {"PDP_APIKEY_PEPPER": "short"}, "at least 32"),
        (
            ("enabled = true\nremove", 'enabled = true\nroutes = "nope.yaml"\nremove'),
            {},
            "envoy.routes: no route table at",
        ),
    ],
)
def test_identity_errors_name_the_key(
    tmp_path: Path, edit: tuple[str, str], env: dict[str, str], message: str
) -> None:
    path = _identity_files(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, environ=env)


def test_identity_from_the_environment_and_flags() -> None:
    env = {
        "PDP_IDENTITY_APIKEYS_ENABLED": "true",
        "PDP_APIKEY_PEPPER": "q" * 40,
        "PDP_IDENTITY_ORDER": "session,apikey,bearer",
    }
    cfg = load_config(None, environ=env, flags=parse_set(["identity.jwt.properties=t=org.t"]))
    assert cfg.identity.apikeys.enabled and cfg.identity.apikeys.pepper == b"q" * 40
    assert cfg.identity.order == ("session", "apikey", "bearer")
    assert dict(cfg.identity.jwt.properties) == {"t": "org.t"}
    with pytest.raises(ConfigError, match="PDP_IDENTITY_ORDER: identity.order: must list"):
        load_config(None, environ={"PDP_IDENTITY_ORDER": "bearer,bearer"})


def test_database_urls_are_checked_when_read_and_never_echo_a_password() -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(None, environ={}, flags={"store.url": "postgresql//pdp:s3cret@db/pdp"})
    assert "store.url: `postgresql//pdp:***@db/pdp` is not a database URL" in str(bad.value)
    with pytest.raises(
        ConfigError, match="audit.url: unsupported database `mysql`; use SQLite or PostgreSQL$"
    ):
        load_config(None, environ={}, flags={"audit.url": "mysql://pdp:s3cret@db/pdp"})
    for key in ("store.url", "audit.url"):  # a port that is not a number: ValueError inside
        with pytest.raises(ConfigError) as bad:
            load_config(None, environ={}, flags={key: "postgresql://pdp:s3cret@db:x/pdp"})
        assert "s3cret" not in str(bad.value) and "is not a database URL" in str(bad.value)
    ok = load_config(None, environ={}, flags={"store.url": "postgresql://pdp@db/pdp"})
    assert ok.store_url == "postgresql://pdp@db/pdp"


def test_unknown_pdp_variables_are_named_not_silently_ignored() -> None:
    from pdp.server.config import unknown_variables

    env = {
        "PDP_LIMITS_MAX_BACH": "3",  # a typo
        "PDP_LIMITS_MAX_BATCH": "3",
        "PDP_DB_URL": "sqlite:///x.db",  # the store commands' variable
        "PDP_APIKEY_PEPPER": "p" * 40,
        "HOME": "/root",
    }
    assert unknown_variables(env) == [
        "PDP_LIMITS_MAX_BACH: not a setting, ignored; did you mean `PDP_LIMITS_MAX_BATCH`?"
    ]
