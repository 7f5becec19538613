"""Browser sessions: an opaque id in a cookie, looked up in a session table.

A session id is 32 random bytes, base64url (43 characters). The store keeps only its
SHA-256 (a copy of the table gives no live cookie); the id has 256 bits of entropy,
so a plain hash is enough and a lookup by hash is one indexed read. A session's
`handle` (the first 16 hex digits of the hash) names it in lists, logs and the audit
log, and is what `pdp sessions revoke` takes.

Lifetime: an absolute expiry (`expires_at`) and an idle timeout. Each successful use
renews the idle deadline (rolling), but the renewal is written at most once per
`renew_after` (or half the idle timeout, when that is shorter), so that reading a
page is not a database write; the idle timeout is therefore honoured to within that.
Renewal never extends past `expires_at`.

No timing oracle: a malformed id, an unknown id and a known one cost the same hash
and the same constant-time comparison (against a dummy when there is no record)
before anything depends on which it was. Every failure gives the same outward answer.

Sessions are created by the application's login flow (`Sessions.create`); the PDP
only reads and renews them. The store is reached through `SessionRepository`;
`MemorySessions` implements it in memory; the SQL store implements it in phase 2.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from hmac import compare_digest
from types import MappingProxyType
from typing import Any, Protocol

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

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_CONTEXT = b"pdp-session-v1\x00"
HANDLE_LENGTH = 16
_DUMMY_ID = "0" * 43


class SessionError(ValueError):
    """A session management request that cannot be done."""


def new_session_id() -> str:
    """A fresh opaque session id for a cookie."""
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """The stored form of a session id (hex SHA-256, domain-separated)."""
    return hashlib.sha256(_CONTEXT + session_id.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session as the store keeps it: never the id, only its hash."""

    id_hash: str
    subject_type: str
    subject_id: str
    created_at: datetime
    expires_at: datetime
    idle_timeout: timedelta
    last_seen_at: datetime
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    revoked_at: datetime | None = None

    @property
    def handle(self) -> str:
        return self.id_hash[:HANDLE_LENGTH]

    @property
    def subject_key(self) -> str:
        return f"{self.subject_type}:{self.subject_id}"

    @property
    def idle_deadline(self) -> datetime:
        return min(self.last_seen_at + self.idle_timeout, self.expires_at)

    def state(self, now: datetime) -> str:
        """`active`, `revoked`, `expired` or `idle`, for lists."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if now >= self.last_seen_at + self.idle_timeout:
            return "idle"
        return "active"


class SessionRepository(Protocol):
    """Where session records live. Methods may raise on storage failure."""

    def get(self, id_hash: str) -> SessionRecord | None:
        """The record with this hash, or None."""
        ...

    def add(self, record: SessionRecord) -> None:
        """Store a new session."""
        ...

    def records(self, subject: str | None = None) -> Sequence[SessionRecord]:
        """Every session (of one subject `type:id`), oldest first."""
        ...

    def find(self, hash_prefix: str) -> Sequence[SessionRecord]:
        """The sessions whose hash starts with `hash_prefix` (a handle): for revocation."""
        ...

    def touch(self, id_hash: str, at: datetime) -> None:
        """Set the last-seen time (rolling renewal of the idle deadline)."""
        ...

    def revoke(self, id_hash: str, at: datetime) -> bool:
        """Revoke one session; False when unknown."""
        ...

    def revoke_subject(self, subject: str, at: datetime) -> int:
        """Revoke every session of a subject (`type:id`): "log out everywhere"."""
        ...


class MemorySessions:
    """A `SessionRepository` in a dict; thread-safe."""

    def __init__(self) -> None:
        self._rows: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()

    def get(self, id_hash: str) -> SessionRecord | None:
        return self._rows.get(id_hash)

    def add(self, record: SessionRecord) -> None:
        with self._lock:
            if record.id_hash in self._rows:
                raise ValueError("session exists")
            self._rows[record.id_hash] = record

    def records(self, subject: str | None = None) -> list[SessionRecord]:
        rows = sorted(self._rows.values(), key=lambda r: (r.created_at, r.id_hash))
        return [r for r in rows if subject is None or r.subject_key == subject]

    def find(self, hash_prefix: str) -> list[SessionRecord]:
        return [r for r in self.records() if r.id_hash.startswith(hash_prefix)]

    def touch(self, id_hash: str, at: datetime) -> None:
        with self._lock:
            row = self._rows.get(id_hash)
            if row is not None and at > row.last_seen_at:
                self._rows[id_hash] = replace(row, last_seen_at=at)

    def revoke(self, id_hash: str, at: datetime) -> bool:
        with self._lock:
            row = self._rows.get(id_hash)
            if row is None:
                return False
            if row.revoked_at is None:
                self._rows[id_hash] = replace(row, revoked_at=at)
            return True

    def revoke_subject(self, subject: str, at: datetime) -> int:
        with self._lock:
            hit = [
                h
                for h, r in self._rows.items()
                if r.subject_key == subject and r.revoked_at is None
            ]
            for h in hit:
                self._rows[h] = replace(self._rows[h], revoked_at=at)
            return len(hit)


class Sessions:
    """Session management: create (for the login flow), list, revoke."""

    def __init__(self, repo: SessionRepository) -> None:
        self._repo = repo

    def create(
        self,
        subject_type: str,
        subject_id: str,
        *,
        now: datetime,
        lifetime: timedelta = timedelta(hours=12),
        idle_timeout: timedelta = timedelta(minutes=30),
        properties: Mapping[str, Any] | None = None,
    ) -> tuple[str, SessionRecord]:
        """A new session: (the id to set in the cookie, its record)."""
        problem = subject_problem(subject_type, subject_id)
        if problem:
            raise SessionError(problem)
        if lifetime <= timedelta(0) or idle_timeout <= timedelta(0):
            raise SessionError("the lifetime and the idle timeout must be positive")
        session_id = new_session_id()
        record = SessionRecord(
            id_hash=session_hash(session_id),
            subject_type=subject_type,
            subject_id=subject_id,
            created_at=now,
            expires_at=now + lifetime,
            idle_timeout=idle_timeout,
            last_seen_at=now,
            properties=MappingProxyType(dict(properties or {})),
        )
        self._repo.add(record)
        return session_id, record

    def list(self, subject: str | None = None) -> Sequence[SessionRecord]:
        return self._repo.records(subject)

    def revoke(self, handle: str, *, now: datetime) -> None:
        """Revoke the one session whose handle (or full hash) starts with `handle`."""
        h = handle.lower()
        if len(h) < 8 or not all(c in "0123456789abcdef" for c in h):
            raise SessionError(f"`{handle}` is not a session handle")
        hits = list(self._repo.find(h))
        if len(hits) != 1:
            raise SessionError(
                f"no session with handle `{handle}`"
                if not hits
                else f"`{handle}` names {len(hits)} sessions; give more digits"
            )
        self._repo.revoke(hits[0].id_hash, now)

    def revoke_subject(self, subject: str, *, now: datetime) -> int:
        """Revoke every session of `subject` (`type:id`); how many were active."""
        return self._repo.revoke_subject(subject, now)


class SessionResolver:
    """Authenticates session ids against a `SessionRepository`, renewing idle deadlines.

    `max_idle` caps every session's idle timeout (the server's
    `identity.sessions.idle_timeout`): a login flow that created sessions with a
    longer one cannot outvote the PDP's configuration.
    """

    kind = CredentialKind.SESSION

    def __init__(
        self,
        repo: SessionRepository,
        *,
        renew_after: timedelta = timedelta(minutes=1),
        max_idle: timedelta | None = None,
    ) -> None:
        self._repo = repo
        self._renew_after = renew_after
        self._max_idle = max_idle
        # Compared against when there is no record; random, so it matches nothing.
        self._dummy = secrets.token_hex(32)

    def resolve(self, credential: str, now: datetime) -> AuthnResult:
        well_formed = _ID_RE.match(credential) is not None
        id_hash = session_hash(credential if well_formed else _DUMMY_ID)
        record: SessionRecord | None = None
        if well_formed:
            try:
                record = self._repo.get(id_hash)
            except Exception:
                log.exception("session store lookup failed")
                return AuthnFailure(Cause.STORE_UNAVAILABLE, self.kind)
        # INVARIANT: one hash and one constant-time comparison on every path, before
        # anything depends on whether the record exists.
        expected = record.id_hash if record is not None else self._dummy
        same = compare_digest(id_hash, expected)
        if not well_formed:
            return AuthnFailure(Cause.SESSION_MALFORMED, self.kind)
        if record is None or not same:
            return AuthnFailure(Cause.SESSION_UNKNOWN, self.kind)
        handle = record.handle
        if record.revoked_at is not None and record.revoked_at <= now:
            return AuthnFailure(Cause.SESSION_REVOKED, self.kind, handle)
        if now >= record.expires_at:
            return AuthnFailure(Cause.SESSION_EXPIRED, self.kind, handle)
        idle = record.idle_timeout
        if self._max_idle is not None and self._max_idle < idle:
            idle = self._max_idle
        if now >= record.last_seen_at + idle:
            return AuthnFailure(Cause.SESSION_IDLE, self.kind, handle)
        last_seen = record.last_seen_at
        # Renew at half the idle timeout at the latest: with a short idle timeout and a
        # longer `renew_after`, a user active all along would otherwise time out.
        if now - last_seen >= min(self._renew_after, idle / 2):
            try:
                self._repo.touch(id_hash, now)
                last_seen = now
            except Exception:  # the session stays valid until its current idle deadline
                log.warning("could not renew session %s", handle, exc_info=True)
        return Identity(
            Subject(record.subject_type, record.subject_id, record.properties),
            self.kind,
            credential_id=handle,
            expires_at=min(last_seen + idle, record.expires_at),
        )
