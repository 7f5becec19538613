"""API keys for machines: shown once, stored as a keyed hash, found by a public prefix.

Format: `pdp_<prefix>_<secret>`, e.g. `pdp_k7m2q9x4r8t1_Yq3...` (43-character secret).

- `prefix`: 12 characters of `[a-z0-9]`, public. It names the key in lists, logs
  and audit records, and is the lookup key in the store (one indexed read).
- `secret`: 43 characters of `[A-Za-z0-9]`, about 256 random bits; shown once at
  creation and never stored.

**Why HMAC-SHA256 with a pepper, not scrypt/argon2.** Slow hashes protect
low-entropy secrets (passwords) against offline guessing. A 256-bit random secret
cannot be guessed however fast the hash, so slowness would only cost every request
(the PDP checks a key on every call). The server-side pepper (a key kept out of the
database) means a copy of the key table alone cannot even test a candidate key, and
binding the prefix into the MAC means a digest copied onto another row verifies
nothing. The comparison is constant-time (`hmac.compare_digest`).

**No timing oracle.** `ApiKeyResolver.resolve` does the same work for a malformed
key, an unknown prefix and a wrong secret: one store lookup (skipped only for a
malformed key, whose format is public anyway), exactly one MAC, exactly one
constant-time comparison (against a dummy digest when there is no record), and only
then looks at which case it was. Every failure gives the same outward answer.

**Rotation.** `ApiKeys.rotate` issues a new key for the same subject and scopes and
lets the old one live on for an overlap window (so deployments can switch over),
after which it fails as `key_rotated`.

The store is reached through the small `ApiKeyRepository` protocol; `MemoryApiKeys`
implements it in memory (tests, embedding); the SQL store implements it in phase 2.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from hmac import compare_digest
from typing import Protocol

from pdp.engine.request import Subject
from pdp.identity.result import (
    AuthnFailure,
    AuthnResult,
    Cause,
    CredentialKind,
    Identity,
    subject_problem,
)

log = logging.getLogger("pdp.identity")

KEY_TAG = "pdp"
PREFIX_LENGTH = 12
SECRET_LENGTH = 43  # 43 × log2(62) ≈ 256 bits
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"^{KEY_TAG}_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")
_PREFIX_RE = re.compile(rf"^[a-z0-9]{{{PREFIX_LENGTH}}}$")
# Domain separation: this MAC is for API keys of format version 1 and nothing else.
_MAC_CONTEXT = b"pdp-apikey-v1\x00"
MIN_PEPPER_BYTES = 32
MAX_KEY_LENGTH = 256  # anything longer is not a key: refused before any work

# Stand-ins for a malformed key, so that it costs the same MAC as a real one.
_DUMMY_PREFIX = "0" * PREFIX_LENGTH
_DUMMY_SECRET = "0" * SECRET_LENGTH


class ApiKeyError(ValueError):
    """A key management request that cannot be done (unknown prefix, revoked key)."""


def generate_key() -> tuple[str, str, str]:
    """A fresh key: (prefix, secret, the full key to show once)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return prefix, secret, f"{KEY_TAG}_{prefix}_{secret}"


def parse_key(text: str) -> tuple[str, str] | None:
    """`pdp_<prefix>_<secret>` → (prefix, secret), or None when it is not one."""
    if len(text) > MAX_KEY_LENGTH:
        return None
    m = _KEY_RE.match(text)
    return (m.group(1), m.group(2)) if m else None


def looks_like_api_key(text: str) -> bool:
    """Whether a bearer value is meant as an API key (a JWT starts with `eyJ`)."""
    return text.startswith(f"{KEY_TAG}_")


def display(prefix: str) -> str:
    """How a key is shown after creation: its prefix only."""
    return f"{KEY_TAG}_{prefix}_…"


class KeyHasher:
    """HMAC-SHA256 of (prefix, secret) under a server-side pepper."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"the API key pepper must be at least {MIN_PEPPER_BYTES} bytes")
        self._pepper = pepper

    def digest(self, prefix: str, secret: str) -> bytes:
        """The stored form of a key."""
        msg = _MAC_CONTEXT + prefix.encode("ascii") + b"\x00" + secret.encode("ascii")
        return hmac.new(self._pepper, msg, hashlib.sha256).digest()

    def matches(self, prefix: str, secret: str, expected: bytes) -> bool:
        """Whether (prefix, secret) has digest `expected`, compared in constant time."""
        return compare_digest(self.digest(prefix, secret), expected)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One key as the store keeps it: never the secret, only its digest."""

    prefix: str
    digest: bytes
    subject_type: str
    subject_id: str
    created_at: datetime
    name: str = ""
    scopes: tuple[str, ...] = ()
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    rotated_to: str | None = None  # prefix of the key that replaced this one

    @property
    def subject_key(self) -> str:
        return f"{self.subject_type}:{self.subject_id}"

    def state(self, now: datetime) -> str:
        """`active`, `expired`, `rotated` or `revoked`, for lists."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "rotated" if self.rotated_to else "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: `key` is shown to the user once and then forgotten."""

    key: str
    record: ApiKeyRecord


class ApiKeyRepository(Protocol):
    """Where key records live. Methods may raise on storage failure."""

    def get(self, prefix: str) -> ApiKeyRecord | None:
        """The record with this prefix, or None."""
        ...

    def add(self, record: ApiKeyRecord) -> None:
        """Store a new record; raises ValueError when the prefix is taken."""
        ...

    def records(self, subject: str | None = None) -> Sequence[ApiKeyRecord]:
        """Every record (of one subject `type:id`), oldest first."""
        ...

    def revoke(self, prefix: str, at: datetime) -> bool:
        """Mark revoked at `at` (an earlier revocation stands); False when unknown."""
        ...

    def retire(self, prefix: str, expires_at: datetime, rotated_to: str) -> bool:
        """Record that `rotated_to` replaces this key, which expires at `expires_at`."""
        ...

    def touch(self, prefix: str, at: datetime) -> None:
        """Set the last-used time."""
        ...


class MemoryApiKeys:
    """An `ApiKeyRepository` in a dict; thread-safe."""

    def __init__(self) -> None:
        self._rows: dict[str, ApiKeyRecord] = {}
        self._lock = threading.Lock()

    def get(self, prefix: str) -> ApiKeyRecord | None:
        return self._rows.get(prefix)

    def add(self, record: ApiKeyRecord) -> None:
        with self._lock:
            if record.prefix in self._rows:
                raise ValueError(f"API key prefix `{record.prefix}` exists")
            self._rows[record.prefix] = record

    def records(self, subject: str | None = None) -> list[ApiKeyRecord]:
        rows = sorted(self._rows.values(), key=lambda r: (r.created_at, r.prefix))
        return [r for r in rows if subject is None or r.subject_key == subject]

    def revoke(self, prefix: str, at: datetime) -> bool:
        with self._lock:
            row = self._rows.get(prefix)
            if row is None:
                return False
            if row.revoked_at is None or row.revoked_at > at:
                self._rows[prefix] = replace(row, revoked_at=at)
            return True

    def retire(self, prefix: str, expires_at: datetime, rotated_to: str) -> bool:
        with self._lock:
            row = self._rows.get(prefix)
            if row is None:
                return False
            keep = row.expires_at is not None and row.expires_at < expires_at
            self._rows[prefix] = replace(
                row, expires_at=row.expires_at if keep else expires_at, rotated_to=rotated_to
            )
            return True

    def touch(self, prefix: str, at: datetime) -> None:
        with self._lock:
            row = self._rows.get(prefix)
            if row is not None:
                self._rows[prefix] = replace(row, last_used_at=at)


class ApiKeys:
    """Key management: create, list, revoke, rotate. Used by `pdp apikeys`."""

    def __init__(self, repo: ApiKeyRepository, hasher: KeyHasher) -> None:
        self._repo = repo
        self._hasher = hasher

    def create(
        self,
        subject_type: str,
        subject_id: str,
        *,
        now: datetime,
        name: str = "",
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """A new key for the subject; the returned `key` is the only copy of the secret."""
        problem = subject_problem(subject_type, subject_id)
        if problem:
            raise ApiKeyError(problem)
        if expires_at is not None and expires_at <= now:
            raise ApiKeyError("the expiry must be in the future")
        for _ in range(5):  # a prefix collision is ~2^-62 per pair; retrying is enough
            prefix, secret, key = generate_key()
            record = ApiKeyRecord(
                prefix=prefix,
                digest=self._hasher.digest(prefix, secret),
                subject_type=subject_type,
                subject_id=subject_id,
                created_at=now,
                name=name,
                scopes=tuple(scopes),
                expires_at=expires_at,
            )
            try:
                self._repo.add(record)
            except ValueError:
                continue
            return IssuedKey(key, record)
        raise ApiKeyError("could not find a free key prefix")  # pragma: no cover

    def list(self, subject: str | None = None) -> Sequence[ApiKeyRecord]:
        return self._repo.records(subject)

    def revoke(self, prefix: str, *, now: datetime) -> None:
        """Revoke at once; the key fails as `key_revoked` from now on."""
        if not self._repo.revoke(_check_prefix(prefix), now):
            raise ApiKeyError(f"no API key with prefix `{prefix}`")

    def rotate(
        self,
        prefix: str,
        *,
        now: datetime,
        overlap: timedelta,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """A new key with the same subject, name and scopes; the old one lives `overlap`.

        The new key's expiry is `expires_at` if given, else the old key's lifetime
        counted from now (none if the old key had none).
        """
        key = _check_prefix(prefix)
        old = self._repo.get(key)
        if old is None:
            raise ApiKeyError(f"no API key with prefix `{prefix}`")
        if old.state(now) != "active":
            raise ApiKeyError(f"API key `{display(prefix)}` is {old.state(now)}")
        if overlap < timedelta(0):
            raise ApiKeyError("the overlap must not be negative")
        if expires_at is None and old.expires_at is not None:
            expires_at = now + (old.expires_at - old.created_at)
        new = self.create(
            old.subject_type,
            old.subject_id,
            now=now,
            name=old.name,
            scopes=old.scopes,
            expires_at=expires_at,
        )
        if not self._repo.retire(key, now + overlap, new.record.prefix):
            # Revoked between our read and the write: the new key must not outlive it.
            self._repo.revoke(new.record.prefix, now)
            raise ApiKeyError(f"API key `{display(prefix)}` changed while rotating it")
        return new


def _check_prefix(prefix: str) -> str:
    # Accept the displayed form too (`pdp_<prefix>_…`), which is what people copy.
    p = prefix.removeprefix(f"{KEY_TAG}_").split("_", 1)[0]
    if not _PREFIX_RE.match(p):
        raise ApiKeyError(f"`{prefix}` is not an API key prefix")
    return p


class ApiKeyResolver:
    """Authenticates `pdp_<prefix>_<secret>` keys against an `ApiKeyRepository`.

    The last-used time is written at most once per `touch_every` per key: a write
    per request would turn every authorization into a database write.
    """

    kind = CredentialKind.API_KEY

    def __init__(
        self,
        repo: ApiKeyRepository,
        hasher: KeyHasher,
        *,
        touch_every: timedelta = timedelta(minutes=1),
    ) -> None:
        self._repo = repo
        self._hasher = hasher
        self._touch_every = touch_every
        # prefix → time of a last-used write that failed (read-only replica, locked file);
        # bounded: only keys that authenticated get here, and a success removes them.
        self._touch_failed: dict[str, datetime] = {}
        # Compared against when there is no record; random, so it matches nothing.
        self._dummy = secrets.token_bytes(32)

    def resolve(self, credential: str, now: datetime) -> AuthnResult:
        parsed = parse_key(credential)
        prefix, secret = parsed if parsed is not None else (_DUMMY_PREFIX, _DUMMY_SECRET)
        record: ApiKeyRecord | None = None
        if parsed is not None:
            try:
                record = self._repo.get(prefix)
            except Exception:
                log.exception("API key store lookup failed")
                return AuthnFailure(Cause.STORE_UNAVAILABLE, self.kind, prefix)
        # INVARIANT: exactly one MAC and one constant-time comparison on every path
        # below, before anything depends on whether the record exists.
        expected = record.digest if record is not None else self._dummy
        matched = self._hasher.matches(prefix, secret, expected)
        if parsed is None:
            return AuthnFailure(Cause.KEY_MALFORMED, self.kind)
        if record is None:
            return AuthnFailure(Cause.KEY_UNKNOWN, self.kind, prefix)
        if not matched:
            return AuthnFailure(Cause.KEY_MISMATCH, self.kind, prefix)
        if record.revoked_at is not None and record.revoked_at <= now:
            return AuthnFailure(Cause.KEY_REVOKED, self.kind, prefix)
        if record.expires_at is not None and now >= record.expires_at:
            cause = Cause.KEY_ROTATED if record.rotated_to else Cause.KEY_EXPIRED
            detail = f"replaced by {display(record.rotated_to)}" if record.rotated_to else ""
            return AuthnFailure(cause, self.kind, prefix, detail)
        last = record.last_used_at
        tried = self._touch_failed.get(prefix)
        if tried is not None and (last is None or tried > last):
            last = tried  # a write that failed is not retried on every request either
        if last is None or now - last >= self._touch_every:
            try:
                self._repo.touch(prefix, now)
                self._touch_failed.pop(prefix, None)
            except Exception:  # last-used is informational: never fail a request on it
                self._touch_failed[prefix] = now
                log.warning("could not record the last use of API key %s", prefix, exc_info=True)
        return Identity(
            Subject(record.subject_type, record.subject_id),
            self.kind,
            credential_id=prefix,
            scopes=record.scopes,
            expires_at=record.expires_at,
        )
