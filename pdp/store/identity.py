"""The durable half of the identity resolvers: API keys, sessions and token revocations in SQL.

    SqlApiKeys           `pdp.identity.apikeys.ApiKeyRepository` on `pdp_api_keys`
    SqlSessions          `pdp.identity.sessions.SessionRepository` on `pdp_sessions`
    SqlTokenRevocations  revoked bearer tokens (`pdp_token_revocations`, by issuer and
                         `jti`) and per-subject cut-offs (`pdp_token_cutoffs`: every
                         token issued before a time); `checker(issuer)` gives the
                         `RevocationCheck` that `pdp.identity.jwt.JwtResolver` takes

They share the `SqlStore`'s engines, URL handling and error translation, but none of
them touches the store revision: a new API key, a session or a revoked token changes
no role a decision reads, so the bindings cache must not be dropped for it.

Reads that serve requests (`get` of a key or a session) are one primary-key probe in
autocommit on the store's read pool. Token revocations are not read per token at
all: `checker` keeps the whole (small) list in memory and re-reads it every
`refresh_interval` (`pdp.identity.revocation.RevocationCache`), so a revocation
reaches every PDP within that interval; while the database cannot be reached the last
list is used for up to `max_staleness`, after which every token is refused
(`store_unavailable`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import Row, Table, bindparam, delete, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from pdp.identity.apikeys import ApiKeyRecord
from pdp.identity.jwt import MAX_LEEWAY
from pdp.identity.revocation import RevocationCache
from pdp.identity.sessions import SessionRecord
from pdp.store.errors import InvalidInput, StoreUnavailable
from pdp.store.models import ApiKey, Session, TokenCutoff, TokenRevocation
from pdp.store.sql import SqlStore

T = TypeVar("T")

log = logging.getLogger("pdp.identity")

_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
_SESSIONS: Table = Session.__table__  # type: ignore[assignment]
# The per-request lookups, built once: building a statement costs more than running
# it on SQLite (measured: half of an Envoy check went to `select(...).where(...)`).
_KEY_BY_PREFIX = select(_KEYS).where(_KEYS.c.prefix == bindparam("prefix"))
_SESSION_BY_HASH = select(_SESSIONS).where(_SESSIONS.c.id_hash == bindparam("id_hash"))
_REVOKED: Table = TokenRevocation.__table__  # type: ignore[assignment]
_CUTOFFS: Table = TokenCutoff.__table__  # type: ignore[assignment]

# The MAC of `pdp.identity.apikeys.KeyHasher` under the configured pepper. A pepper
# rotation will name its peppers here; today there is one.
DEFAULT_SCHEME = "hmac-sha256"
MAX_JTI_LENGTH = 1024
_HEX = "0123456789abcdef"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# After a read found the database unreachable, reads fail at once for this long: an
# outage must not hold a request thread per credential check for the whole connect
# timeout (against a host that does not answer, 5 s each) while the pool is empty.
RETRY_AFTER = 1.0


class _Db:
    """Reads on the store's autocommit pool, writes in one transaction; errors translated."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._reader = store.engines[-1]
        self._down_until = 0.0
        self._down_why = ""

    def read(self, fn: Callable[[Connection], T]) -> T:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(self._down_why)
        try:
            return self._read(fn)
        except StoreUnavailable as exc:
            self._down_why = exc.message
            self._down_until = time.monotonic() + RETRY_AFTER
            raise

    def _read(self, fn: Callable[[Connection], T]) -> T:
        def go(_: Engine) -> T:
            for attempt in (0, 1):
                try:
                    with self._reader.connect() as conn:
                        return fn(conn)
                except DBAPIError as exc:
                    # A pooled connection from before a database restart: retry once.
                    if exc.connection_invalidated and attempt == 0:
                        continue
                    raise
            raise AssertionError("unreachable")

        return self._store.run(go)

    def run(self, fn: Callable[[Engine], T]) -> T:
        return self._store.run(fn)

    def write(self, fn: Callable[[Connection], T]) -> T:
        def go(engine: Engine) -> T:
            with engine.begin() as conn:
                return fn(conn)

        return self._store.run(go)


def _split(subject: str) -> tuple[str, str]:
    kind, _, ident = subject.partition(":")
    return kind, ident


# ---------------------------------------------------------------------- API keys


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """A key record with what only the SQL store keeps: who made it, and how it is hashed."""

    record: ApiKeyRecord
    created_by: str | None
    scheme: str


class SqlApiKeys:
    """An `ApiKeyRepository` on `pdp_api_keys`. `created_by` is recorded on new keys."""

    def __init__(
        self, store: SqlStore, *, scheme: str = DEFAULT_SCHEME, created_by: str | None = None
    ) -> None:
        self._db = _Db(store)
        self._scheme = scheme
        self._created_by = created_by

    def get(self, prefix: str) -> ApiKeyRecord | None:
        row = self._db.read(lambda c: c.execute(_KEY_BY_PREFIX, {"prefix": prefix}).first())
        return None if row is None else _key_record(row)

    def add(self, record: ApiKeyRecord) -> None:
        values = {
            "prefix": record.prefix,
            "digest": record.digest,
            "scheme": self._scheme,
            "subject": record.subject_key,
            "name": record.name,
            "scopes": list(record.scopes),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
            "last_used_at": record.last_used_at,
            "rotated_to": record.rotated_to,
            "created_by": self._created_by,
        }

        def go(engine: Engine) -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(_KEYS.insert().values(**values))
            except IntegrityError:
                raise ValueError(f"API key prefix `{record.prefix}` exists") from None

        self._db.run(go)

    def entries(self, subject: str | None = None) -> list[ApiKeyEntry]:
        """Every key (of one subject `type:id`), oldest first, with `created_by`."""
        k = _KEYS.c
        q = select(_KEYS).order_by(k.created_at, k.prefix)
        if subject is not None:
            q = q.where(k.subject == subject)
        rows = self._db.read(lambda c: c.execute(q).all())
        return [ApiKeyEntry(_key_record(r), r.created_by, r.scheme) for r in rows]

    def records(self, subject: str | None = None) -> list[ApiKeyRecord]:
        return [e.record for e in self.entries(subject)]

    def revoke(self, prefix: str, at: datetime) -> bool:
        k = _KEYS.c

        def go(c: Connection) -> bool:
            row = c.execute(select(k.revoked_at).where(k.prefix == prefix)).first()
            if row is None:
                return False
            if row.revoked_at is None or row.revoked_at > at:  # an earlier revocation stands
                c.execute(update(_KEYS).where(k.prefix == prefix).values(revoked_at=at))
            return True

        return self._db.write(go)

    def retire(self, prefix: str, expires_at: datetime, rotated_to: str) -> bool:
        k = _KEYS.c

        def go(c: Connection) -> bool:
            row = c.execute(select(k.expires_at).where(k.prefix == prefix)).first()
            if row is None:
                return False
            keep = row.expires_at is not None and row.expires_at < expires_at
            c.execute(
                update(_KEYS)
                .where(k.prefix == prefix)
                .values(expires_at=row.expires_at if keep else expires_at, rotated_to=rotated_to)
            )
            return True

        return self._db.write(go)

    def touch(self, prefix: str, at: datetime) -> None:
        k = _KEYS.c
        self._db.write(
            lambda c: c.execute(
                update(_KEYS)
                .where(k.prefix == prefix, k.last_used_at.is_(None) | (k.last_used_at < at))
                .values(last_used_at=at)
            )
        )


def _key_record(r: Row[Any]) -> ApiKeyRecord:
    kind, ident = _split(r.subject)
    return ApiKeyRecord(
        prefix=r.prefix,
        digest=bytes(r.digest),
        subject_type=kind,
        subject_id=ident,
        created_at=r.created_at,
        name=r.name,
        scopes=tuple(r.scopes or ()),
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        last_used_at=r.last_used_at,
        rotated_to=r.rotated_to,
    )


# ---------------------------------------------------------------------- sessions


class SqlSessions:
    """A `SessionRepository` on `pdp_sessions`."""

    def __init__(self, store: SqlStore) -> None:
        self._db = _Db(store)

    def get(self, id_hash: str) -> SessionRecord | None:
        row = self._db.read(lambda c: c.execute(_SESSION_BY_HASH, {"id_hash": id_hash}).first())
        return None if row is None else _session_record(row)

    def add(self, record: SessionRecord) -> None:
        values = {
            "id_hash": record.id_hash,
            "subject": record.subject_key,
            "properties": dict(record.properties),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "last_seen_at": record.last_seen_at,
            # Whole seconds, rounded up: a timeout is never shortened.
            "idle_timeout_s": math.ceil(record.idle_timeout.total_seconds()),
            "revoked_at": record.revoked_at,
        }

        def go(engine: Engine) -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(_SESSIONS.insert().values(**values))
            except IntegrityError:
                raise ValueError("session exists") from None

        self._db.run(go)

    def records(self, subject: str | None = None) -> list[SessionRecord]:
        s = _SESSIONS.c
        q = select(_SESSIONS).order_by(s.created_at, s.id_hash)
        if subject is not None:
            q = q.where(s.subject == subject)
        return [_session_record(r) for r in self._db.read(lambda c: c.execute(q).all())]

    def find(self, hash_prefix: str) -> list[SessionRecord]:
        prefix = hash_prefix.lower()
        if not prefix or any(ch not in _HEX for ch in prefix):
            return []
        s = _SESSIONS.c
        # A range on the primary key (an index scan on both databases, unlike LIKE
        # under a non-C collation): every hex string starting with `prefix` sorts
        # from `prefix` up to `prefix` + "g".
        q = (
            select(_SESSIONS)
            .where(s.id_hash >= prefix, s.id_hash < prefix + "g")
            .order_by(s.created_at, s.id_hash)
            .limit(100)
        )
        rows = self._db.read(lambda c: c.execute(q).all())
        return [_session_record(r) for r in rows if r.id_hash.startswith(prefix)]

    def touch(self, id_hash: str, at: datetime) -> None:
        s = _SESSIONS.c
        self._db.write(
            lambda c: c.execute(
                update(_SESSIONS)
                .where(s.id_hash == id_hash, s.last_seen_at < at)
                .values(last_seen_at=at)
            )
        )

    def revoke(self, id_hash: str, at: datetime) -> bool:
        s = _SESSIONS.c

        def go(c: Connection) -> bool:
            row = c.execute(select(s.revoked_at).where(s.id_hash == id_hash)).first()
            if row is None:
                return False
            if row.revoked_at is None:
                c.execute(update(_SESSIONS).where(s.id_hash == id_hash).values(revoked_at=at))
            return True

        return self._db.write(go)

    def revoke_subject(self, subject: str, at: datetime) -> int:
        s = _SESSIONS.c
        return self._db.write(
            lambda c: (
                c.execute(
                    update(_SESSIONS)
                    .where(s.subject == subject, s.revoked_at.is_(None))
                    .values(revoked_at=at)
                ).rowcount
            )
        )

    def purge(self, before: datetime) -> int:
        """Delete sessions that expired or were revoked before `before`; how many."""
        s = _SESSIONS.c
        return self._db.write(
            lambda c: (
                c.execute(
                    delete(_SESSIONS).where((s.expires_at < before) | (s.revoked_at < before))
                ).rowcount
            )
        )


def _session_record(r: Row[Any]) -> SessionRecord:
    kind, ident = _split(r.subject)
    return SessionRecord(
        id_hash=r.id_hash,
        subject_type=kind,
        subject_id=ident,
        created_at=r.created_at,
        expires_at=r.expires_at,
        idle_timeout=timedelta(seconds=r.idle_timeout_s),
        last_seen_at=r.last_seen_at,
        properties=MappingProxyType(dict(r.properties or {})),
        revoked_at=r.revoked_at,
    )


# ---------------------------------------------------------------------- token revocation


@dataclass(frozen=True, slots=True)
class RevokedToken:
    """One revoked token; `issuer` "" means a token with this `jti` from any issuer."""

    issuer: str
    jti: str
    expires_at: datetime | None
    revoked_at: datetime
    created_by: str | None


@dataclass(frozen=True, slots=True)
class SubjectCutoff:
    """Every token of `subject` issued before `not_before` is revoked."""

    subject: str
    not_before: datetime
    revoked_at: datetime
    created_by: str | None


@dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """What one issuer's check needs: its revoked jtis and every subject's cut-off."""

    jtis: frozenset[str]
    cutoffs: Mapping[str, datetime]

    def is_revoked(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool:
        if jti is not None and jti in self.jtis:
            return True
        cutoff = self.cutoffs.get(subject)
        # A token without `iat` cannot show it was issued after the cut-off.
        return cutoff is not None and (issued_at is None or issued_at < cutoff)


class SqlTokenRevocations:
    """Revoked bearer tokens: by `jti` (and issuer), and by subject issued before a time."""

    def __init__(self, store: SqlStore) -> None:
        self._db = _Db(store)

    def revoke_token(
        self,
        jti: str,
        *,
        issuer: str = "",
        expires_at: datetime | None = None,
        now: datetime | None = None,
        created_by: str | None = None,
    ) -> tuple[RevokedToken, bool]:
        """Revoke one token; (the revocation, whether it is new). An existing one stands."""
        if not jti or len(jti) > MAX_JTI_LENGTH or not jti.isprintable():
            raise InvalidInput(f"a jti must be 1 to {MAX_JTI_LENGTH} printable characters")
        if not issuer.isprintable():
            raise InvalidInput("the issuer must be printable text")
        now = now or _utcnow()
        r = _REVOKED.c

        def go(c: Connection) -> tuple[RevokedToken, bool]:
            row = c.execute(select(_REVOKED).where(r.issuer == issuer, r.jti == jti)).first()
            if row is not None:
                return _revoked(row), False
            new = RevokedToken(issuer, jti, expires_at, now, created_by)
            c.execute(
                _REVOKED.insert().values(
                    issuer=issuer,
                    jti=jti,
                    expires_at=expires_at,
                    revoked_at=now,
                    created_by=created_by,
                )
            )
            return new, True

        return self._db.write(go)

    def revoke_subject(
        self,
        subject: str,
        *,
        before: datetime | None = None,
        now: datetime | None = None,
        created_by: str | None = None,
    ) -> tuple[SubjectCutoff, bool]:
        """Revoke every token of `subject` issued before `before` (default: now).

        (the cut-off in force, whether it moved). A later cut-off already stored
        stands: a revocation is never narrowed by this call.
        """
        now = now or _utcnow()
        before = before or now
        if before > now:
            raise InvalidInput(
                "the cut-off must not be in the future: it would refuse tokens not yet issued"
            )
        t = _CUTOFFS.c

        def go(c: Connection) -> tuple[SubjectCutoff, bool]:
            row = c.execute(select(_CUTOFFS).where(t.subject == subject)).first()
            if row is not None and row.not_before >= before:
                return _cutoff(row), False
            values = {"not_before": before, "revoked_at": now, "created_by": created_by}
            if row is None:
                c.execute(_CUTOFFS.insert().values(subject=subject, **values))
            else:
                c.execute(update(_CUTOFFS).where(t.subject == subject).values(**values))
            return SubjectCutoff(subject, before, now, created_by), True

        return self._db.write(go)

    def tokens(self) -> list[RevokedToken]:
        r = _REVOKED.c
        q = select(_REVOKED).order_by(r.revoked_at, r.issuer, r.jti)
        return [_revoked(row) for row in self._db.read(lambda c: c.execute(q).all())]

    def cutoffs(self) -> list[SubjectCutoff]:
        q = select(_CUTOFFS).order_by(_CUTOFFS.c.subject)
        return [_cutoff(row) for row in self._db.read(lambda c: c.execute(q).all())]

    def purge(self, now: datetime | None = None) -> int:
        """Delete revocations of tokens that have expired (beyond any leeway); how many."""
        horizon = (now or _utcnow()) - timedelta(seconds=MAX_LEEWAY)
        r = _REVOKED.c
        return self._db.write(
            lambda c: (
                c.execute(
                    delete(_REVOKED).where(r.expires_at.is_not(None), r.expires_at < horizon)
                ).rowcount
            )
        )

    def snapshot(self, issuer: str, now: datetime | None = None) -> RevocationSnapshot:
        """One issuer's revoked jtis (its own and any issuer's) and all cut-offs: one read."""
        horizon = (now or _utcnow()) - timedelta(seconds=MAX_LEEWAY)
        r, t = _REVOKED.c, _CUTOFFS.c

        def go(c: Connection) -> RevocationSnapshot:
            jtis = c.execute(
                select(r.jti).where(
                    r.issuer.in_([issuer, ""]),
                    r.expires_at.is_(None) | (r.expires_at >= horizon),
                )
            ).scalars()
            cutoffs = c.execute(select(t.subject, t.not_before)).all()
            return RevocationSnapshot(
                frozenset(jtis), MappingProxyType({s: nb for s, nb in cutoffs})
            )

        return self._db.read(go)

    def checker(
        self,
        issuer: str,
        *,
        refresh_interval: float = 5.0,
        max_staleness: float = 60.0,
        wait: float = 1.0,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> RevocationCache:
        """The `RevocationCheck` for a `JwtResolver` of `issuer`: this issuer's list in
        memory, re-read every `refresh_interval` (see `pdp.identity.revocation`).
        `background=False` re-reads in the checking thread (tests)."""
        return RevocationCache(
            lambda: self.snapshot(issuer),
            refresh_interval=refresh_interval,
            max_staleness=max_staleness,
            wait=wait,
            clock=clock,
            spawn=None if background else _inline,
        )


def _inline(read: Callable[[], object]) -> None:
    read()


def _revoked(r: Row[Any]) -> RevokedToken:
    return RevokedToken(r.issuer, r.jti, r.expires_at, r.revoked_at, r.created_by)


def _cutoff(r: Row[Any]) -> SubjectCutoff:
    return SubjectCutoff(r.subject, r.not_before, r.revoked_at, r.created_by)


__all__ = [
    "DEFAULT_SCHEME",
    "ApiKeyEntry",
    "RevocationSnapshot",
    "RevokedToken",
    "SqlApiKeys",
    "SqlSessions",
    "SqlTokenRevocations",
    "SubjectCutoff",
]
