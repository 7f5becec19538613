"""Key sets: which keys are usable, caching, refresh, failure, and where they come from."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.identity.jwks import (
    MAX_JWKS_BYTES,
    JwksCache,
    JwksError,
    check_jwks_url,
    file_source,
    parse_jwks,
    url_source,
)
from tests.httpd import answering, serving, trickling
from tests.identity.keys import ec_key, ed_key, jwks, public_jwk, rsa_key

ALL = ("RS256", "PS256", "ES256", "ES384", "EdDSA")


def test_usable_keys_are_parsed_once_per_algorithm_they_fit() -> None:
    keys, skipped = parse_jwks(
        jwks(public_jwk(rsa_key(), "r"), public_jwk(ec_key(), "e"), public_jwk(ed_key(), "d")),
        ALL,
    )
    assert skipped == []
    assert keys.find("r", "RS256") is not None and keys.find("r", "PS256") is not None
    assert keys.find("r", "ES256") is None
    assert keys.find("e", "ES256") is not None and keys.find("e", "ES384") is None
    assert keys.find("d", "EdDSA") is not None
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("jwk", "why"),
    [
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "x"}, "symmetric"),
        ({**public_jwk(rsa_key(), "x"), "d": "AQAB"}, "private"),
        ({**public_jwk(rsa_key(), "x"), "use": "enc"}, "use"),
        ({**public_jwk(rsa_key(), "x"), "alg": "HS256"}, "not allowed"),
        (public_jwk(ec_key("p384", "P-384"), "x"), "fits none"),  # ES384 not allowed below
        ({"kty": "RSA", "kid": "x", "n": "AQAB"}, "unreadable"),
        ({"kty": "RSA", "kid": 7}, "not a string"),
        ("not an object", "not an object"),
    ],
)
def test_unusable_keys_are_skipped_with_a_reason(jwk: object, why: str) -> None:
    keys, skipped = parse_jwks(json.dumps({"keys": [jwk]}).encode(), ("RS256", "ES256"))
    assert len(keys) == 0
    assert len(skipped) == 1 and why in skipped[0]


def test_short_rsa_keys_are_skipped() -> None:
    keys, skipped = parse_jwks(jwks(public_jwk(rsa_key("short", 1024), "s")), ("RS256",))
    assert len(keys) == 0 and "2048" in skipped[0]


def test_a_kid_used_twice_disables_both_keys() -> None:
    body = jwks(public_jwk(rsa_key(), "k"), public_jwk(rsa_key("other"), "k"))
    keys, skipped = parse_jwks(body, ("RS256",))
    assert keys.find("k", "RS256") is None
    assert "twice" in skipped[0]


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"keys": {}}', b"{}"])
def test_a_document_that_is_not_a_key_set_is_an_error(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body, ("RS256",))


class Source:
    def __init__(self, *bodies: bytes | Exception) -> None:
        self.bodies = list(bodies)
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        body = self.bodies[0] if len(self.bodies) == 1 else self.bodies.pop(0)
        if isinstance(body, Exception):
            raise body
        return body


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def cache(src: Source, clock: Clock, **kw: float) -> JwksCache:
    return JwksCache(
        src,
        algorithms=("RS256",),
        ttl=kw.get("ttl", 300),
        min_refresh_interval=kw.get("min_refresh_interval", 30),
        max_stale=kw.get("max_stale", 3600),
        clock=clock,
        spawn=lambda job: job(),  # the background refresh, run inline: deterministic
    )


def test_a_slow_refresh_never_holds_up_a_key_the_current_set_has() -> None:
    release, started, finished = threading.Event(), threading.Event(), threading.Event()
    body = jwks(public_jwk(rsa_key(), "k"))
    calls = 0

    def fetch() -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:  # the refresh after the ttl: the issuer is slow
            started.set()
            release.wait(10)
            finished.set()
        return body

    clock = Clock()
    c = JwksCache(fetch, algorithms=("RS256",), ttl=300, min_refresh_interval=30, clock=clock)
    assert c.key("k", "RS256") is not None  # the first load waits: nothing to use yet
    clock.t = 301
    assert c.key("k", "RS256") is not None  # starts the refresh in the background
    assert started.wait(5)
    for _ in range(5):  # while it hangs, known keys answer and unknown kids do not wait
        assert c.key("k", "RS256") is not None
        assert c.key("other", "RS256") is None
    assert not finished.is_set()  # all of the above ran while the fetch was hanging
    release.set()
    assert finished.wait(5)


def test_the_set_is_fetched_once_and_again_after_its_ttl() -> None:
    src, clock = Source(jwks(public_jwk(rsa_key(), "k"))), Clock()
    c = cache(src, clock)
    for _ in range(5):
        assert c.key("k", "RS256") is not None
    assert src.calls == 1
    clock.t = 301
    assert c.key("k", "RS256") is not None
    assert src.calls == 2


def test_a_failed_refresh_keeps_the_last_good_set_until_max_stale() -> None:
    good = jwks(public_jwk(rsa_key(), "k"))
    src, clock = Source(good, OSError("down")), Clock()
    c = cache(src, clock, max_stale=1000)
    assert c.key("k", "RS256") is not None
    clock.t = 400
    assert c.key("k", "RS256") is not None  # refresh failed, old set still used
    assert "down" in c.last_error
    clock.t = 1001
    with pytest.raises(JwksError, match="older"):
        c.key("k", "RS256")


def test_a_set_that_never_loaded_fails_and_retries_at_the_interval_only() -> None:
    src, clock = Source(OSError("down")), Clock()
    c = cache(src, clock)
    for _ in range(10):
        with pytest.raises(JwksError):
            c.key("k", "RS256")
    assert src.calls == 1
    clock.t = 31
    with pytest.raises(JwksError):
        c.key("k", "RS256")
    assert src.calls == 2


def test_concurrent_unknown_kids_fetch_once() -> None:
    src, clock = Source(jwks(public_jwk(rsa_key(), "k"))), Clock()
    c = cache(src, clock)
    c.key("k", "RS256")
    clock.t = 60
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        c.key("unknown", "RS256")

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert src.calls == 2


def test_unsupported_algorithms_are_refused_by_the_cache() -> None:
    with pytest.raises(ValueError, match="HS256"):
        JwksCache(Source(b""), algorithms=("RS256", "HS256"))


def test_file_source_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(public_jwk(rsa_key(), "a")))
    fetch = file_source(path)
    assert b'"a"' in fetch()
    path.write_bytes(jwks(public_jwk(rsa_key(), "b")))
    assert b'"b"' in fetch()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://id.example.com/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://localhost/jwks", True),
        ("http://[::1]/jwks", True),
        ("http://id.example.com/jwks", False),
        ("ftp://id.example.com/jwks", False),
        ("file:///etc/jwks.json", False),
        ("https:///jwks", False),
    ],
)
def test_key_set_urls_must_be_https_except_on_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_jwks_url(url) == url
    else:
        with pytest.raises(ValueError):
            check_jwks_url(url)


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, list[int]]]:
    """A key set served over HTTP on loopback; the list counts requests."""
    body = jwks(public_jwk(rsa_key(), "srv"))
    hits: list[int] = []

    def counted() -> bytes:
        hits.append(1)
        return body

    with serving(answering(counted)) as base:
        yield f"{base}/jwks.json", hits


def test_url_source_fetches_over_http_on_loopback(jwks_server: tuple[str, list[int]]) -> None:
    url, hits = jwks_server
    c = JwksCache(url_source(url, timeout=2.0), algorithms=("RS256",))
    assert c.key("srv", "RS256") is not None
    assert c.key("srv", "RS256") is not None
    assert len(hits) == 1


def test_requests_do_not_queue_behind_a_slow_first_fetch() -> None:
    """Regression: before the first set loaded, every bearer check waited for the one
    fetch under way, however long the issuer took: enough of them took every thread
    of the server. Now they wait a short, bounded time and are refused."""
    release, started = threading.Event(), threading.Event()
    body = jwks(public_jwk(rsa_key(), "k"))

    def slow() -> bytes:
        started.set()
        release.wait(30)
        return body

    c = JwksCache(slow, algorithms=("RS256",), first_load_wait=0.2)
    first: list[object] = []
    fetcher = threading.Thread(target=lambda: first.append(c.key("k", "RS256")), daemon=True)
    fetcher.start()
    try:
        assert started.wait(5)
        errors: list[str] = []

        def ask() -> None:
            try:
                c.key("k", "RS256")
            except JwksError as exc:
                errors.append(str(exc))

        began = time.monotonic()
        others = [threading.Thread(target=ask, daemon=True) for _ in range(10)]
        for t in others:
            t.start()
        for t in others:
            t.join(5)
        assert not any(t.is_alive() for t in others), "requests queued behind the fetch"
        assert time.monotonic() - began < 3
        assert len(errors) == 10 and "still under way" in errors[0]
        assert c.fetches == 1
    finally:
        release.set()
    fetcher.join(5)
    assert first and first[0] is not None
    assert c.key("k", "RS256") is not None  # loaded: answered at once from now on


@pytest.fixture
def trickle_server() -> Iterator[tuple[str, threading.Event]]:
    """A key set server that sends its body one byte every 20 ms until stopped."""
    stop = threading.Event()
    try:
        with serving(trickling(stop, 0.02)) as base:
            yield f"{base}/jwks.json", stop
    finally:
        stop.set()


def test_a_download_has_a_deadline_as_a_whole(
    trickle_server: tuple[str, threading.Event],
) -> None:
    """Regression: `timeout` bounded each read only, so a server trickling bytes kept a
    fetch (and, before the first load, the key-set lock) for as long as it liked."""
    url, stop = trickle_server
    fetch = url_source(url, timeout=2.0, deadline=0.5)
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(fetch())
        except BaseException as exc:
            outcome.append(exc)

    began = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    stop.set()  # lets a fetch without a deadline end too
    assert not t.is_alive() and outcome, "the download went on past its deadline"
    assert time.monotonic() - began < 3
    assert isinstance(outcome[0], JwksError) and "within 0.5 s" in str(outcome[0])


def test_a_download_larger_than_the_cap_is_refused() -> None:
    big = b" " * (MAX_JWKS_BYTES + 10)
    # No Content-Length: the body ends when the connection does.
    with serving(answering(lambda: big, length=False)) as base:
        fetch = url_source(f"{base}/jwks.json", timeout=2.0)
        with pytest.raises(JwksError, match="larger than"):
            fetch()
