"""JSON Web Key Sets: where token verification keys come from, cached and refreshed.

A key set is fetched from a file or an HTTPS URL, parsed once into ready-to-use
PyJWT keys (one per allowed algorithm the key fits), and cached:

- after `ttl` seconds it is fetched again;
- a token whose `kid` is unknown triggers a refresh (the issuer may have rotated
  keys), but at most one fetch per `min_refresh_interval`, whatever the traffic: a
  flood of tokens with made-up `kid`s costs the issuer one request per interval;
- a failed fetch keeps the last good set, for up to `max_stale` seconds after it was
  loaded; after that (or if no set was ever loaded) verification fails with
  `jwks_unavailable`;
- until the first set is loaded, a request waits at most `first_load_wait` seconds
  for a fetch that another request is making, then fails with `jwks_unavailable`; a
  download from a URL has a deadline as a whole, not only per read.

Keys are only ever taken from here: a token's own `jwk`, `jku` or `x5u` headers are
ignored, so a token cannot bring the key that verifies it.

Which keys are usable:

- RSA (≥ 2048 bits), EC on the curve its algorithm names, OKP Ed25519/Ed448;
- `use`, when present, must be `sig`; a key's `alg`, when present, is the only
  algorithm it is used with;
- symmetric (`oct`) keys and keys with private parts are skipped with a warning: a
  PDP that could verify HMAC tokens could also mint them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = logging.getLogger("pdp.identity")

# Algorithm → (key type, curves it may use). Deliberately asymmetric only: `none`
# and HS256/384/512 are not supported at all, so no configuration can enable them
# and no RSA public key can ever be used as an HMAC secret.
ALGORITHM_KEYS: Mapping[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
SUPPORTED_ALGORITHMS = frozenset(ALGORITHM_KEYS)
MAX_JWKS_BYTES = 1024 * 1024
_CHUNK = 64 * 1024

Fetch = Callable[[], bytes]


class JwksError(Exception):
    """No usable key set: never loaded, unreadable, or older than `max_stale`."""


class KeySource(Protocol):
    """What the JWT resolver needs: the key for a (kid, alg), or None."""

    def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The verification key; raises JwksError when no key set is available."""
        ...


# --- fetching ------------------------------------------------------------------------


def file_source(path: str | Path) -> Fetch:
    """Read the key set from a file (re-read on every refresh)."""
    p = Path(path)

    def fetch() -> bytes:
        with p.open("rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise JwksError(f"{p}: larger than {MAX_JWKS_BYTES} bytes")
        return data

    return fetch


def url_source(url: str, *, timeout: float = 5.0, deadline: float = 10.0) -> Fetch:
    """Fetch the key set over HTTPS (plain HTTP only from a loopback address).

    `timeout` bounds each network operation (connecting, each read); `deadline` the
    whole download: the body is read in pieces against it, so a server that trickles
    a byte at a time cannot keep a fetch going for longer than `deadline` plus one
    read. At most `MAX_JWKS_BYTES` are read.
    """
    check_jwks_url(url)
    if timeout <= 0 or deadline <= 0:
        raise ValueError("`timeout` and `deadline` must be positive")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pdp-jwks"}
    )

    def fetch() -> bytes:
        give_up = time.monotonic() + deadline
        with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as resp:
            # A redirect must not take us off TLS.
            check_jwks_url(resp.geturl())
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() >= give_up:
                    raise JwksError(f"{url}: not downloaded within {deadline:g} s")
                chunk: bytes = resp.read1(_CHUNK)  # what has arrived: one read at most
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise JwksError(f"{url}: larger than {MAX_JWKS_BYTES} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    return fetch


def check_jwks_url(url: str) -> str:
    """The URL, if keys may be fetched from it: https, or http on loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return url
    raise ValueError(f"`{url}`: the key set URL must be https:// (http:// only on loopback)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySet:
    """Parsed keys: by `kid`, then by algorithm; keys without a kid apart."""

    by_kid: Mapping[str, Mapping[str, PyJWK]] = field(default_factory=dict)
    unnamed: tuple[Mapping[str, PyJWK], ...] = ()

    def find(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for this token header. A token without `kid` is accepted only when
        the set has exactly one key usable with its algorithm: never a guess among
        several."""
        if kid is not None:
            return self.by_kid.get(kid, {}).get(alg)
        usable = [k[alg] for k in (*self.by_kid.values(), *self.unnamed) if alg in k]
        return usable[0] if len(usable) == 1 else None

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.unnamed)


def parse_jwks(data: bytes, algorithms: Collection[str]) -> tuple[KeySet, list[str]]:
    """Bytes of a JWKS document → (usable keys, a note for each key skipped).

    Raises JwksError when the document itself is not a key set.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"not JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise JwksError("not a key set: no `keys` list")
    by_kid: dict[str, dict[str, PyJWK]] = {}
    unnamed: list[dict[str, PyJWK]] = []
    skipped: list[str] = []
    for i, jwk in enumerate(keys):
        name = f"keys[{i}]"
        if not isinstance(jwk, dict):
            skipped.append(f"{name}: not an object")
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"{name}: `kid` is not a string")
            continue
        if isinstance(kid, str):
            name = f"key `{kid}`"
        usable, why = _usable(jwk, algorithms)
        if why:
            skipped.append(f"{name}: {why}")
            continue
        if kid is None:
            unnamed.append(usable)
        elif kid in by_kid:
            # Two keys with one kid: which one a token means is a guess. Use neither.
            skipped.append(f"{name}: `kid` appears twice; both skipped")
            by_kid[kid] = {}
        else:
            by_kid[kid] = usable
    return KeySet({k: v for k, v in by_kid.items() if v}, tuple(unnamed)), skipped


def _usable(jwk: Mapping[str, Any], algorithms: Collection[str]) -> tuple[dict[str, PyJWK], str]:
    """The algorithms → keys this JWK can verify, or a reason it cannot."""
    kty = jwk.get("kty")
    if kty == "oct":
        return {}, "symmetric (`oct`) keys are not supported"
    if "d" in jwk or "p" in jwk or "k" in jwk:
        return {}, "has private key material; publish public keys only"
    if jwk.get("use", "sig") != "sig":
        return {}, f"`use` is {jwk.get('use')!r}, not `sig`"
    crv = jwk.get("crv")
    named = jwk.get("alg")
    if named is not None and named not in algorithms:
        return {}, f"its `alg` {named!r} is not allowed"
    candidates = [named] if named is not None else list(algorithms)
    out: dict[str, PyJWK] = {}
    last_error = ""
    for alg in candidates:
        want_kty, curves = ALGORITHM_KEYS[alg]
        if kty != want_kty or (curves is not None and crv not in curves):
            continue
        try:
            key = PyJWK(dict(jwk), algorithm=alg)
        except (PyJWTError, ValueError, TypeError) as exc:
            last_error = f"unreadable: {exc}"
            continue
        too_short = key.Algorithm.check_key_length(key.key)
        if too_short:
            return {}, too_short
        out[alg] = key
    if not out:
        return {}, last_error or f"a `{kty}` key fits none of the allowed algorithms"
    return out, ""


# --- the cache -----------------------------------------------------------------------


class JwksCache:
    """A `KeySource` over a fetch function, with TTL, refresh on unknown kid, rate limit.

    Thread-safe. Readers take the current set without locking (one reference read).
    Only the very first load makes callers wait for a fetch, and then boundedly: the
    request that finds no set fetches it, and any other that arrives meanwhile waits at
    most `first_load_wait` seconds for that fetch before it is refused
    (`JwksError`, audited as `jwks_unavailable`), so a slow issuer cannot tie up the
    server's threads. Afterwards a fetch never holds up a request that the current set
    can answer: an expired set is refreshed in the background, and a token with an
    unknown `kid` waits only if no other fetch is under way (else it is judged on the
    current set).
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        algorithms: Collection[str],
        ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        max_stale: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "JWKS",
        spawn: Callable[[Callable[[], object]], None] | None = None,
        first_load_wait: float = 0.5,
    ) -> None:
        bad = set(algorithms) - SUPPORTED_ALGORITHMS
        if bad:
            raise ValueError(f"unsupported algorithms: {', '.join(sorted(bad))}")
        if first_load_wait < 0:
            raise ValueError("`first_load_wait` must not be negative")
        self._fetch = fetch
        self._algorithms = frozenset(algorithms)
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._max_stale = max_stale
        self._clock = clock
        self._name = name
        # How a background refresh is run: a daemon thread; tests run it inline.
        self._spawn = spawn or _daemon_thread
        self._first_load_wait = first_load_wait
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        self.fetches = 0  # fetch attempts, for tests and stats
        self.last_error = ""

    def key(self, kid: str | None, alg: str) -> PyJWK | None:
        now = self._clock()
        keys = self._keys
        if keys is None:
            keys = self._refresh(now, wait=self._first_load_wait)
        elif now - self._loaded_at >= self._ttl and not self._lock.locked():
            self._spawn(lambda: self._refresh(now, wait=0))
        if keys is None:
            why = self.last_error or "its first fetch is still under way"
            raise JwksError(f"{self._name}: no key set loaded ({why})")
        if now - self._loaded_at > self._max_stale:
            raise JwksError(f"{self._name}: key set older than {self._max_stale:g} s")
        found = keys.find(kid, alg)
        if found is None:
            # Maybe the issuer rotated keys since we fetched: look again, rate-limited.
            refreshed = self._refresh(now, wait=0)
            if refreshed is not None and refreshed is not keys:
                found = refreshed.find(kid, alg)
        return found

    def _refresh(self, now: float, *, wait: float) -> KeySet | None:
        """Fetch now unless an attempt was made in the last `min_refresh_interval`.

        If another thread is fetching, wait at most `wait` seconds for it (0: not at
        all), then return the set as it is.
        """
        got = self._lock.acquire(timeout=wait) if wait > 0 else self._lock.acquire(False)
        if not got:
            return self._keys
        try:
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                return self._keys
            self._attempted_at = now
            self.fetches += 1
            try:
                keys, skipped = parse_jwks(self._fetch(), self._algorithms)
            except Exception as exc:  # network, file, JSON: keep the last good set
                self.last_error = str(exc) or type(exc).__name__
                log.warning("%s: refresh failed: %s", self._name, self.last_error)
                return self._keys
            for note in skipped:
                log.warning("%s: %s", self._name, note)
            self._keys = keys
            self._loaded_at = now
            self.last_error = ""
            return keys
        finally:
            self._lock.release()


def _daemon_thread(job: Callable[[], object]) -> None:
    threading.Thread(target=job, name="jwks-refresh", daemon=True).start()
