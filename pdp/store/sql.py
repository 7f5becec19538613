"""The SQL store: who holds which role where, groups, and subject attributes.

`SqlStore` is both the repository (grant, revoke, list, groups, attributes, import,
export) and an uncached `RoleSource` (one query per lookup). The PDP wraps it in
`pdp.store.cache.CachedRoleSource`.

Every write runs in one transaction that first bumps the store revision: the row
lock on `pdp_store_revision` serialises writers (so checks such as "this membership
makes no cycle" cannot race), and readers learn of the change from the new revision.
On PostgreSQL the same transaction sends `NOTIFY pdp_store, '<revision>'`, delivered
to listeners when it commits. A write that turns out to change nothing is rolled
back, so the revision moves only when the data does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InvalidatePoolError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

from pdp.engine.bindings import Bindings, RoleBinding
from pdp.store import migrate
from pdp.store import validate as v
from pdp.store.config import parse_url, redact
from pdp.store.document import Places
from pdp.store.errors import (
    InvalidInput,
    NotFound,
    SchemaNotReady,
    StoreError,
    StoreUnavailable,
)
from pdp.store.importer import (
    Change,
    ImportPlan,
    StoredState,
    attrs_text,
    check_document,
    plan_import,
    summary,
    until_text,
)
from pdp.store.models import Binding, Membership, StoreRevision, Subject, UTCDateTime

T = TypeVar("T")

log = logging.getLogger("pdp.store")

NOTIFY_CHANNEL = "pdp_store"

_SUBJECTS: Table = Subject.__table__  # type: ignore[assignment]
_MEMBERSHIPS: Table = Membership.__table__  # type: ignore[assignment]
_BINDINGS: Table = Binding.__table__  # type: ignore[assignment]
_REVISION: Table = StoreRevision.__table__  # type: ignore[assignment]

# The hot query: the subject and all its groups (nested; UNION, not UNION ALL, so a
# cycle that slipped in could not loop), joined with their unexpired bindings in the
# requested scopes, plus the store revision in the same snapshot. One round trip.
# The plan it should get: an index probe per group step (ix_pdp_memberships_member),
# then probes of the unique (subject, scope, role) index for the principals. Not a
# join: SQLite, once ANALYZE has run, plans the join with a Bloom filter built by
# scanning all of pdp_bindings (15 ms at 200,000 rows instead of 30 µs), and for
# PostgreSQL see _RECURSIVE_STEP. There is deliberately no index on scope
# alone: planners would prefer it and read every `global` binding of everyone.
_LOOKUP_TEMPLATE = """
    WITH RECURSIVE principals(key) AS (
        SELECT CAST({p} AS VARCHAR)
        UNION
        {step}
    )
    SELECT b.role, b.expires_at, NULL
      FROM pdp_bindings b
     WHERE {subject_in_principals}
       AND b.scope IN ({scopes}) AND (b.expires_at IS NULL OR b.expires_at > {p})
    UNION ALL
    SELECT NULL, NULL, r.revision FROM pdp_store_revision r WHERE r.id = 1
"""


# PostgreSQL estimates a recursive CTE's rows from nothing (10 per step, ~200 in
# all), and with that it would hash-join each step against a sequential scan of
# pdp_memberships (0.3 ms at 3,000 memberships, worse with more) and scan
# pdp_bindings below a few hundred thousand rows (8 ms at 50,000). A LATERAL
# subquery that cannot be flattened (OFFSET 0) makes each step an index probe, and
# an array from an InitPlan makes the bindings one index scan on
# (subject = ANY(...), scope = ANY(...)), at every size. SQLite plans the plain forms
# well (and has no LATERAL).
_RECURSIVE_STEP = {
    "postgresql": "SELECT g.group_key FROM principals p CROSS JOIN LATERAL "
    "(SELECT m.group_key FROM pdp_memberships m WHERE m.member_key = p.key OFFSET 0) g",
    "sqlite": "SELECT m.group_key FROM pdp_memberships m JOIN principals p ON m.member_key = p.key",
}
_SUBJECT_IN_PRINCIPALS = {
    "postgresql": "b.subject = ANY(ARRAY(SELECT key FROM principals))",
    "sqlite": "b.subject IN (SELECT key FROM principals)",
}


def lookup_sql(n_scopes: int, dialect: str, paramstyle: str) -> str:
    """The lookup for `n_scopes` scopes, with positional parameters in the driver's style.

    Rendered once per (count, style) and run with `exec_driver_sql`: the hot path
    skips SQLAlchemy's compiler, as the driver's own statement cache then applies.
    """
    p = "?" if paramstyle == "qmark" else "%s"
    return _LOOKUP_TEMPLATE.format(
        p=p,
        scopes=", ".join([p] * n_scopes),
        step=_RECURSIVE_STEP[dialect],
        subject_in_principals=_SUBJECT_IN_PRINCIPALS[dialect],
    )


_GROUPS_OF_SQL = text(
    """
    WITH RECURSIVE up(key) AS (
        SELECT CAST(:subject AS VARCHAR)
        UNION
        SELECT m.group_key FROM pdp_memberships m JOIN up ON m.member_key = up.key
    )
    SELECT key FROM up WHERE key <> :subject
    """
)

_CONTAINS_SQL = text(
    """
    WITH RECURSIVE down(key) AS (
        SELECT CAST(:member AS VARCHAR)
        UNION
        SELECT m.member_key FROM pdp_memberships m JOIN down ON m.group_key = down.key
    )
    SELECT 1 FROM down WHERE key = :group LIMIT 1
    """
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one lookup read: the unexpired (role, expires_at) rows and the revision."""

    revision: int
    rows: tuple[tuple[str, datetime | None], ...]

    def roles(self, now: datetime) -> frozenset[str]:
        return frozenset(r for r, exp in self.rows if exp is None or exp > now)


@dataclass(frozen=True)
class WriteResult:
    """The outcome of a write: whether anything changed, the revision after, and what."""

    changed: bool
    revision: int
    changes: tuple[Change, ...] = ()
    message: str = ""
    notes: tuple[str, ...] = ()  # things left out on purpose (e.g. expired bindings)


@dataclass(frozen=True)
class SubjectInfo:
    """All the store knows about one subject."""

    key: str
    exists: bool
    attributes: Mapping[str, Any]
    groups: tuple[str, ...]  # direct
    all_groups: tuple[str, ...]  # direct and nested
    members: tuple[str, ...]  # when the subject is a group
    bindings: tuple[RoleBinding, ...]  # held directly
    inherited: tuple[RoleBinding, ...]  # held through a group


@dataclass
class _Tx:
    conn: Connection
    revision: int
    now: datetime
    changes: list[Change] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqlStore:
    """The store on SQLite or PostgreSQL; thread-safe (one engine, a connection pool)."""

    def __init__(
        self,
        url: str | URL,
        *,
        connect_timeout: float = 5.0,
        pool_size: int = 5,
        auto_create: bool = True,
        check_schema: bool = True,
    ) -> None:
        """Open the store at `url`.

        A new (empty) SQLite database is migrated here when `auto_create`;
        PostgreSQL and existing databases must already be at the current schema
        (`pdp db upgrade`) unless `check_schema` is False.
        """
        self.url_obj = parse_url(url)
        self.url = redact(self.url_obj)
        self.dialect = self.url_obj.get_backend_name()
        if not auto_create and _is_plain_sqlite_file(self.url_obj):
            # SQLite would create the file on connect: a mistyped path would then be
            # an empty store that answers "no bindings" rather than an error.
            path = Path(str(self.url_obj.database))
            if not path.exists():
                raise NotFound(
                    f"no SQLite database at {path}; `pdp db upgrade --db {self.url}` creates "
                    "one (so do the verbs that write: grant, set, add-member, import)"
                )
        self.connect_timeout = connect_timeout
        # A SQLite file may be deleted or replaced (a restore) while we run: watched.
        self._file = (
            SqliteFile(str(self.url_obj.database)) if _is_plain_sqlite_file(self.url_obj) else None
        )
        try:
            self.engine = _create_engine(self.url_obj, connect_timeout, pool_size, file=self._file)
            # Reads run in autocommit on their own pool: no BEGIN/ROLLBACK round trips
            # around the one lookup query. (An in-memory SQLite database exists once,
            # in the write engine's single connection, so there it is shared.)
            self._reader = (
                self.engine
                if _is_memory(self.url_obj)
                else _create_engine(
                    self.url_obj, connect_timeout, pool_size, autocommit=True, file=self._file
                )
            )
        except SQLAlchemyError as exc:  # e.g. a URL argument the driver does not take
            raise InvalidInput(
                f"cannot use the database URL {self.url}: {short_reason(str(exc))}"
            ) from None
        dialect = self.engine.dialect
        self._paramstyle = dialect.paramstyle
        self._lookup_sql: dict[int, str] = {}
        when = UTCDateTime().dialect_impl(dialect)  # with the dialect's own text form
        self._bind_time: Callable[[Any], Any] = when.bind_processor(dialect) or (lambda v: v)
        self._read_time: Callable[[Any], Any] = when.result_processor(dialect, None) or (
            lambda v: v
        )
        self._last_revision: int | None = None
        self._closed = False
        if check_schema:
            try:
                self.ensure_schema(auto_create=auto_create)
            except BaseException:
                self.close()  # no connections left to the garbage collector
                raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every pooled connection."""
        if not self._closed:
            self._closed = True
            self.engine.dispose()
            self._reader.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines in use (writes, then reads), e.g. to attach SQLAlchemy events."""
        return (self.engine,) if self._reader is self.engine else (self.engine, self._reader)

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def generation(self) -> int:
        """How many times the database file was found replaced under us (SQLite; else 0).

        Revisions of the old and the new file are unrelated numbers: a cache must drop
        everything when this moves, whatever the revision says.
        """
        return 0 if self._file is None else self._file.generation

    def ensure_schema(self, *, auto_create: bool = True) -> None:
        """Check the schema is current; migrate a brand-new SQLite database."""
        try:
            have = migrate.current(self.engine)
            if have is None and self.dialect == "sqlite" and auto_create:
                if migrate.is_empty(self.engine):
                    migrate.upgrade(self.engine)
                    # Visible, so that a mistyped path does not pass for an empty store.
                    log.warning("created a new, empty store at %s", self.url)
                    return
        except SQLAlchemyError as exc:
            raise self._translate(exc) from None
        want = migrate.head()
        if have is None:
            raise SchemaNotReady(
                f"the database at {self.url} has no pdp schema; "
                f"run `pdp db upgrade --db {self.url}`"
            )
        if have != want and not migrate.known(have):
            raise SchemaNotReady(migrate.newer_message(self.url, have))
        if have != want:
            raise SchemaNotReady(
                f"the database at {self.url} is at schema {have}, this pdp needs {want}; "
                f"run `pdp db upgrade --db {self.url}`"
            )

    def run(self, fn: Callable[[Engine], T]) -> T:
        """Run `fn(engine)` (migrations, admin tasks) with database errors translated."""
        try:
            return fn(self.engine)
        except SQLAlchemyError as exc:
            raise self._translate(exc) from None

    # ------------------------------------------------------------------ errors

    def _translate(self, exc: BaseException) -> StoreError:
        """A database exception → one clear StoreError naming the (redacted) URL."""
        text_ = str(getattr(exc, "orig", None) or exc)
        low = text_.lower()
        if "no such table" in low or "does not exist" in low and "relation" in low:
            return SchemaNotReady(
                f"the database at {self.url} has no pdp schema; "
                f"run `pdp db upgrade --db {self.url}`"
            )
        if isinstance(exc, DBAPIError) and (
            exc.connection_invalidated or _is_connection_error(exc)
        ):
            return StoreUnavailable(
                f"cannot reach the database at {self.url}: {short_reason(text_)}"
            )
        if isinstance(exc, IntegrityError):
            return StoreError(
                f"the database at {self.url} refused the change: {short_reason(text_)}"
            )
        return StoreError(f"database error at {self.url}: {short_reason(text_)}")

    def _read(self, fn: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """Run a read; retry once on a connection the pool had kept from before an outage.

        `snapshot`: all of `fn`'s statements see one state of the database (a
        REPEATABLE READ transaction on PostgreSQL); otherwise each runs in autocommit.
        """
        for attempt in (0, 1):
            try:
                if snapshot:
                    with self.engine.connect() as conn:
                        if self.is_postgresql:
                            conn = conn.execution_options(isolation_level="REPEATABLE READ")
                        with conn.begin():
                            return fn(conn)
                with self._reader.connect() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 0:
                    continue
                raise self._translate(exc) from None
            except SQLAlchemyError as exc:
                raise self._translate(exc) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads

    def revision(self) -> int:
        """The store revision: bumped by every change."""
        rev: int = self._read(
            lambda c: c.execute(
                select(_REVISION.c.revision).where(_REVISION.c.id == 1)
            ).scalar_one()
        )
        self._last_revision = rev
        return rev

    @property
    def bindings_version(self) -> str | None:
        """The revision seen by the latest read, reported with decisions."""
        return None if self._last_revision is None else str(self._last_revision)

    def lookup(self, subject: str, scopes: Sequence[str], now: datetime) -> Lookup:
        """Unexpired bindings of `subject` and its groups (nested) in `scopes`: one query."""
        n = len(scopes)
        sql = self._lookup_sql.get(n)
        if sql is None:
            sql = self._lookup_sql[n] = lookup_sql(n, self.dialect, self._paramstyle)
        stamp = self._bind_time(now)
        params = (subject, *scopes, stamp)
        result = self._read(lambda c: c.exec_driver_sql(sql, params).all())
        revision = 0
        rows: list[tuple[str, datetime | None]] = []
        read_time = self._read_time
        for role, expires, rev in result:
            if role is None:
                revision = int(rev)
            else:
                rows.append((role, None if expires is None else read_time(expires)))
        self._last_revision = revision
        return Lookup(revision, tuple(rows))

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        """`RoleSource`: roles held by `subject` (directly or through groups) in `scopes`."""
        return self.lookup(subject, scopes, now).roles(now)

    def attributes(self, subject: str) -> Mapping[str, Any]:
        """`RoleSource`: the subject's stored, trusted attributes; empty when unknown."""
        attrs = self._read(
            lambda c: c.execute(
                select(_SUBJECTS.c.attributes).where(_SUBJECTS.c.key == subject)
            ).scalar_one_or_none()
        )
        return MappingProxyType(dict(attrs or {}))

    def list_bindings(
        self,
        *,
        subject: str | None = None,
        role: str | None = None,
        scope: str | None = None,
        include_expired: bool = True,
        now: datetime | None = None,
    ) -> list[RoleBinding]:
        """Bindings matching every filter given, ordered by subject, scope and role."""
        b = _BINDINGS.c
        q = select(b.subject, b.role, b.scope, b.expires_at, b.created_by, b.created_at)
        if subject is not None:
            q = q.where(b.subject == v.subject_key(subject))
        if role is not None:
            q = q.where(b.role == role)
        if scope is not None:
            q = q.where(b.scope == v.scope(scope))
        if not include_expired:
            q = q.where(b.expires_at.is_(None) | (b.expires_at > (now or _utcnow())))
        q = q.order_by(b.subject, b.scope, b.role)
        rows = self._read(lambda c: c.execute(q).all())
        return [RoleBinding(*row) for row in rows]

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Every group with members → its direct members, sorted."""
        m = _MEMBERSHIPS.c
        rows = self._read(
            lambda c: c.execute(
                select(m.group_key, m.member_key).order_by(m.group_key, m.member_key)
            ).all()
        )
        out: dict[str, list[str]] = defaultdict(list)
        for g, member in rows:
            out[g].append(member)
        return {g: tuple(ms) for g, ms in out.items()}

    def members(self, group: str) -> tuple[str, ...]:
        """Direct members of `group`."""
        key = v.group_key(group)
        m = _MEMBERSHIPS.c
        rows = self._read(
            lambda c: (
                c.execute(select(m.member_key).where(m.group_key == key).order_by(m.member_key))
                .scalars()
                .all()
            )
        )
        return tuple(rows)

    def subject_info(self, subject: str, now: datetime | None = None) -> SubjectInfo:
        """Attributes, groups (direct and nested), members, and bindings of one subject."""
        key = v.subject_key(subject)
        now = now or _utcnow()

        def read(c: Connection) -> SubjectInfo:
            attrs = c.execute(
                select(_SUBJECTS.c.attributes).where(_SUBJECTS.c.key == key)
            ).one_or_none()
            m = _MEMBERSHIPS.c
            direct = (
                c.execute(select(m.group_key).where(m.member_key == key).order_by(m.group_key))
                .scalars()
                .all()
            )
            members = (
                c.execute(select(m.member_key).where(m.group_key == key).order_by(m.member_key))
                .scalars()
                .all()
            )
            nested = sorted(c.execute(_GROUPS_OF_SQL, {"subject": key}).scalars().all())
            b = _BINDINGS.c
            cols = (b.subject, b.role, b.scope, b.expires_at, b.created_by, b.created_at)
            own = c.execute(select(*cols).where(b.subject == key).order_by(b.scope, b.role)).all()
            inherited = (
                c.execute(
                    select(*cols).where(b.subject.in_(nested)).order_by(b.subject, b.scope, b.role)
                ).all()
                if nested
                else []
            )
            return SubjectInfo(
                key,
                attrs is not None,
                MappingProxyType(dict(attrs[0] or {})) if attrs else MappingProxyType({}),
                tuple(direct),
                tuple(nested),
                tuple(members),
                tuple(RoleBinding(*r) for r in own),
                tuple(RoleBinding(*r) for r in inherited),
            )

        return self._read(read, snapshot=True)

    def export(self, *, include_expired: bool = False, now: datetime | None = None) -> Bindings:
        """The whole store as `Bindings` (what `dump_bindings` writes as YAML).

        Expired bindings are left out unless asked for: they grant nothing, and an
        import refuses expiries in the past.
        """
        now = now or _utcnow()

        def read(c: Connection) -> Bindings:
            s = _SUBJECTS.c
            subjects = {
                k: dict(a)
                for k, a in c.execute(select(s.key, s.attributes).order_by(s.key)).all()
                if a
            }
            m = _MEMBERSHIPS.c
            groups: dict[str, set[str]] = defaultdict(set)
            for g, member in c.execute(select(m.group_key, m.member_key)).all():
                groups[g].add(member)
            b = _BINDINGS.c
            q = select(b.subject, b.role, b.scope, b.expires_at, b.created_by).order_by(
                b.subject, b.scope, b.role
            )
            if not include_expired:
                q = q.where(b.expires_at.is_(None) | (b.expires_at > now))
            rows = c.execute(q).all()
            return Bindings(
                subjects=subjects,
                groups={g: frozenset(ms) for g, ms in sorted(groups.items())},
                bindings=tuple(RoleBinding(*r) for r in rows),
            )

        return self._read(read, snapshot=True)

    # ------------------------------------------------------------------ writes

    @contextmanager
    def _write(self, now: datetime | None = None) -> Iterator[_Tx]:
        """One transaction that bumps the revision first and rolls back if nothing changed."""
        try:
            with self.engine.connect() as conn:
                trans = conn.begin()
                try:
                    rev = conn.execute(
                        update(_REVISION)
                        .where(_REVISION.c.id == 1)
                        .values(revision=_REVISION.c.revision + 1)
                        .returning(_REVISION.c.revision)
                    ).scalar_one()
                    tx = _Tx(conn, int(rev), now or _utcnow())
                    yield tx
                    if not tx.changes:
                        trans.rollback()
                        tx.revision -= 1
                        return
                    if self.is_postgresql:
                        # Delivered to every LISTENer when (and only if) this commits.
                        conn.execute(
                            text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": NOTIFY_CHANNEL, "payload": str(tx.revision)},
                        )
                    trans.commit()
                    self._last_revision = tx.revision
                except BaseException:
                    if trans.is_active:
                        trans.rollback()
                    raise
        except SQLAlchemyError as exc:
            raise self._translate(exc) from None

    def _ensure_subjects(self, tx: _Tx, keys: Iterable[str]) -> None:
        """Create rows (no attributes) for subjects referenced but not stored yet."""
        rows = [_subject_row(k, tx.now) for k in sorted(set(keys))]
        if rows:
            tx.conn.execute(self._insert_ignore(_SUBJECTS), rows)

    def _insert_ignore(self, table: Table) -> Any:
        if self.is_postgresql:
            return pg_dialect.insert(table).on_conflict_do_nothing()
        return sqlite_dialect.insert(table).on_conflict_do_nothing()

    def grant(
        self,
        subject: str,
        role: str,
        scope: str = "global",
        *,
        expires: datetime | None = None,
        created_by: str | None = None,
        roles: v.RoleCatalog | None = None,
        now: datetime | None = None,
    ) -> WriteResult:
        """Bind `role` to `subject` within `scope`.

        A duplicate grant changes nothing and says so (`changed` False); a grant that
        differs only in expiry updates the expiry. Bad input raises `InvalidInput`
        before the database is touched.
        """
        now = now or _utcnow()
        key = v.subject_key(subject)
        scope = v.scope(scope)
        v.role_name(role)
        if roles is not None:
            roles.check(role)
        expires = v.expiry(expires, now)
        b = _BINDINGS.c
        with self._write(now) as tx:
            existing = tx.conn.execute(
                select(b.pk, b.expires_at).where(b.subject == key, b.scope == scope, b.role == role)
            ).one_or_none()
            where = f"`{role}` in `{scope}`"
            if existing is None:
                self._ensure_subjects(tx, [key])
                tx.conn.execute(
                    _BINDINGS.insert().values(
                        subject=key,
                        role=role,
                        scope=scope,
                        expires_at=expires,
                        created_by=created_by,
                        created_at=now,
                    )
                )
                tx.changes.append(Change("grant", key, f"{where}{until_text(expires)}"))
                message = f"granted {where} to `{key}`{until_text(expires)}"
            elif existing.expires_at != expires:
                tx.conn.execute(
                    update(_BINDINGS).where(b.pk == existing.pk).values(expires_at=expires)
                )
                tx.changes.append(Change("update-expiry", key, f"{where}{until_text(expires)}"))
                message = (
                    f"`{key}` already held {where}; expiry now{until_text(expires) or ' never'}"
                )
            else:
                message = f"`{key}` already holds {where}; nothing changed"
        return WriteResult(bool(tx.changes), tx.revision, tuple(tx.changes), message)

    def revoke(self, subject: str, role: str, scope: str = "global") -> WriteResult:
        """Remove one binding; `NotFound` when there is none."""
        key = v.subject_key(subject)
        scope = v.scope(scope)
        b = _BINDINGS.c
        with self._write() as tx:
            n = tx.conn.execute(
                delete(_BINDINGS).where(b.subject == key, b.scope == scope, b.role == role)
            ).rowcount
            if not n:
                raise NotFound(f"`{key}` holds no `{role}` in `{scope}`; nothing to revoke")
            tx.changes.append(Change("revoke", key, f"`{role}` in `{scope}`"))
        return WriteResult(
            True, tx.revision, tuple(tx.changes), f"revoked `{role}` in `{scope}` from `{key}`"
        )

    def set_attributes(
        self,
        subject: str,
        values: Mapping[str, Any],
        unset: Iterable[str] = (),
        *,
        replace: bool = False,
    ) -> WriteResult:
        """Merge `values` into the subject's attributes (or replace them), removing `unset`."""
        key = v.subject_key(subject)
        unset = list(unset)
        v.attributes(values)
        v.attributes(dict.fromkeys(unset))
        s = _SUBJECTS.c
        with self._write() as tx:
            self._ensure_subjects(tx, [key])
            old = tx.conn.execute(select(s.attributes).where(s.key == key)).scalar_one() or {}
            new = {} if replace else dict(old)
            new.update(values)
            for k in unset:
                new.pop(k, None)
            if new != old:
                tx.conn.execute(
                    update(_SUBJECTS).where(s.key == key).values(attributes=new, updated_at=tx.now)
                )
                tx.changes.append(Change("set-attributes", key, attrs_text(new)))
        msg = f"attributes of `{key}`: {attrs_text(new)}" if tx.changes else "nothing changed"
        return WriteResult(bool(tx.changes), tx.revision, tuple(tx.changes), msg)

    def add_member(self, group: str, member: str, *, created_by: str | None = None) -> WriteResult:
        """Put `member` in `group`; refuses a membership that would close a cycle."""
        g = v.group_key(group)
        m = v.subject_key(member)
        if g == m:
            raise InvalidInput(f"`{g}` cannot be a member of itself")
        mc = _MEMBERSHIPS.c
        with self._write() as tx:
            exists = tx.conn.execute(
                select(mc.group_key).where(mc.group_key == g, mc.member_key == m)
            ).first()
            if exists:
                return_msg = f"`{m}` is already a member of `{g}`; nothing changed"
            else:
                # INVARIANT: the revision row is locked, so no other writer can add the
                # other half of a cycle between this check and the insert.
                if tx.conn.execute(_CONTAINS_SQL, {"member": m, "group": g}).first():
                    raise InvalidInput(
                        f"adding `{m}` to `{g}` would make a cycle: `{m}` already contains `{g}`"
                    )
                self._ensure_subjects(tx, [g, m])
                tx.conn.execute(
                    _MEMBERSHIPS.insert().values(
                        group_key=g, member_key=m, created_by=created_by, created_at=tx.now
                    )
                )
                tx.changes.append(Change("add-member", g, m))
                return_msg = f"added `{m}` to `{g}`"
        return WriteResult(bool(tx.changes), tx.revision, tuple(tx.changes), return_msg)

    def remove_member(self, group: str, member: str) -> WriteResult:
        """Take `member` out of `group`; `NotFound` when it was not in it."""
        g = v.group_key(group)
        m = v.subject_key(member)
        mc = _MEMBERSHIPS.c
        with self._write() as tx:
            n = tx.conn.execute(
                delete(_MEMBERSHIPS).where(mc.group_key == g, mc.member_key == m)
            ).rowcount
            if not n:
                raise NotFound(f"`{m}` is not a member of `{g}`; nothing to remove")
            tx.changes.append(Change("remove-member", g, m))
        return WriteResult(True, tx.revision, tuple(tx.changes), f"removed `{m}` from `{g}`")

    # ------------------------------------------------------------------ import

    def import_bindings(
        self,
        doc: Bindings,
        *,
        replace: bool = False,
        dry_run: bool = False,
        roles: v.RoleCatalog | None = None,
        created_by: str | None = None,
        now: datetime | None = None,
        places: Places | None = None,
    ) -> WriteResult:
        """Make the store hold what `doc` holds, in one transaction (see `plan_import`).

        Importing the same document twice changes nothing the second time. `dry_run`
        computes the same changes and rolls back. Any problem (a role no policy
        declares, an expiry in the past, a cycle across document and store) raises
        `InvalidInput` listing every problem, and nothing changes. `places` (from
        `parse_document`) lets those problems name the document's entries.
        """
        now = now or _utcnow()
        check_document(doc, roles)
        with self._write(now) as tx:
            plan = plan_import(
                doc, self._stored_state(tx.conn), replace=replace, now=now, places=places
            )
            changes = plan.changes()
            if plan and not dry_run:
                self._apply(tx, plan, created_by)
                tx.changes.extend(changes)
        applied = bool(tx.changes)
        if applied and self.is_postgresql and len(plan.grants) + len(plan.add_members) > 10_000:
            # Fresh planner statistics now, not when autovacuum gets round to it: with
            # none, PostgreSQL scans memberships and lookups take tens of milliseconds.
            self._read(
                lambda c: c.exec_driver_sql("ANALYZE pdp_subjects, pdp_memberships, pdp_bindings")
            )
        return WriteResult(
            applied,
            tx.revision,
            tuple(changes),
            summary(changes, applied=applied, dry_run=dry_run),
            tuple(plan.notes()),
        )

    def _stored_state(self, c: Connection) -> StoredState:
        s, m, b = _SUBJECTS.c, _MEMBERSHIPS.c, _BINDINGS.c
        return StoredState(
            attributes={k: a or {} for k, a in c.execute(select(s.key, s.attributes)).all()},
            memberships={(g, mem) for g, mem in c.execute(select(m.group_key, m.member_key))},
            bindings={
                (subj, sc, role): (pk, exp)
                for pk, subj, sc, role, exp in c.execute(
                    select(b.pk, b.subject, b.scope, b.role, b.expires_at)
                )
            },
        )

    def _apply(self, tx: _Tx, plan: ImportPlan, created_by: str | None) -> None:
        c, now = tx.conn, tx.now
        s, m, b = _SUBJECTS.c, _MEMBERSHIPS.c, _BINDINGS.c
        # New subjects go in with their attributes; only stored ones need an update.
        self._bulk_insert(
            c,
            _SUBJECTS,
            [_subject_row(k, now, plan.set_attributes.get(k)) for k in plan.new_subjects],
        )
        created = set(plan.new_subjects)
        updates = [{"k": k, "a": a} for k, a in plan.set_attributes.items() if k not in created]
        if updates:
            c.execute(
                update(_SUBJECTS)
                .where(s.key == bindparam("k"))
                .values(attributes=bindparam("a"), updated_at=now),
                updates,
            )
        if plan.remove_members:
            c.execute(
                delete(_MEMBERSHIPS).where(
                    m.group_key == bindparam("g"), m.member_key == bindparam("mem")
                ),
                [{"g": g, "mem": mem} for g, mem in plan.remove_members],
            )
        self._bulk_insert(
            c,
            _MEMBERSHIPS,
            [
                {"group_key": g, "member_key": mem, "created_by": created_by, "created_at": now}
                for g, mem in plan.add_members
            ],
        )
        if plan.revokes:
            c.execute(
                delete(_BINDINGS).where(b.pk == bindparam("p")),
                [{"p": pk} for _, pk in plan.revokes],
            )
        if plan.updates:
            c.execute(
                update(_BINDINGS).where(b.pk == bindparam("p")).values(expires_at=bindparam("e")),
                [{"p": pk, "e": rb.expires} for pk, rb in plan.updates],
            )
        self._bulk_insert(
            c,
            _BINDINGS,
            [
                {
                    "subject": rb.subject,
                    "role": rb.role,
                    "scope": rb.scope,
                    "expires_at": rb.expires,
                    "created_by": rb.created_by or created_by,
                    "created_at": now,
                }
                for rb in plan.grants
            ],
        )

    def _bulk_insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows fast: COPY on PostgreSQL, the driver's executemany on SQLite.

        Both skip SQLAlchemy's per-row parameter processing (a third of a million-row
        import), so values are converted here the way the column types would.
        """
        if not rows:
            return
        if self.is_postgresql and len(rows) <= 500:
            conn.execute(table.insert(), rows)
            return
        cols = list(rows[0])
        convert: list[Callable[[Any], Any] | None] = []
        for c in cols:
            kind = table.c[c].type
            if isinstance(kind, UTCDateTime):
                convert.append(_memo(self._bind_time))  # most rows share `created_at`
            elif isinstance(kind, JSON):
                convert.append(json.dumps)
            else:
                convert.append(None)
        pairs = list(zip(cols, convert, strict=True))
        values = (
            tuple(row[c] if f is None or row[c] is None else f(row[c]) for c, f in pairs)
            for row in rows
        )
        if self.is_postgresql:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                with cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy:
                    for v in values:
                        copy.write_row(v)
            return
        marks = ", ".join("?" * len(cols))
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({marks})", list(values)
        )


# ---------------------------------------------------------------------- engine


def _memo(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    seen: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        out = seen.get(value)
        if out is None:
            out = seen[value] = fn(value)
        return out

    return convert


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _is_plain_sqlite_file(url: URL) -> bool:
    """A SQLite database named by a file path (not memory, not a `file:` URI filename)."""
    if url.get_backend_name() != "sqlite" or _is_memory(url):
        return False
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    return not (uri or str(url.database).startswith("file:"))


_FILE_ID = "pdp_sqlite_file_id"


class SqliteFile:
    """The file of a SQLite store, watched for being deleted or replaced while in use.

    A restore from backup (`rm pdp.db*`, copy the backup in) leaves every pooled
    connection on the deleted file: without this, the PDP would answer from the old
    data for good, revocations made in the new file unseen. So each connection
    remembers the file's (device, inode) when it opens, and each checkout from the
    pool compares that with the path's: a replaced file makes the pool reconnect
    (to the new file); a missing one makes the store unavailable (fail closed).
    Once any connection has opened the file, it is never created again: SQLite would
    otherwise quietly make an empty database at the path, and an empty store denies
    everything while looking healthy.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        # Only a store that is new (no file yet) may have its file created.
        self.opened = os.path.exists(self.path)
        self.generation = 0
        self._current: tuple[int, int] | None = None
        # The file was found missing: whatever appears at the path next is another
        # file, even if it gets the same inode number (freed once nothing held it).
        self._lost = False
        self._lock = threading.Lock()

    def identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino)

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._do_connect)
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "checkout", self._on_checkout)

    def _do_connect(
        self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> Any:
        if not self.opened:
            return None  # the first connection of a new store creates the file
        dbapi = dialect.loaded_dbapi
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=rw"  # never creates
        try:
            return dbapi.connect(uri, **{**cparams, "uri": True})
        except dbapi.OperationalError:
            if not os.path.exists(self.path):
                self._lost = True
                raise dbapi.OperationalError(
                    f"the database file {self.path} is gone (deleted or moved while in use); "
                    "no new, empty one is made in its place"
                ) from None
            raise

    def _on_connect(self, _dbapi_conn: Any, record: Any) -> None:
        self.opened = True
        try:
            ident = self.identity()
        except OSError:
            return
        record.info[_FILE_ID] = ident
        self._seen(ident)

    def _on_checkout(self, _dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        known = record.info.get(_FILE_ID)
        try:
            ident = self.identity()
        except OSError as exc:
            self._lost = True
            # Reconnecting fails with a clear error (see _do_connect).
            raise InvalidatePoolError(f"database file: {exc.strerror}") from None
        if known is None or ident == known:
            return
        self._seen(ident)
        # Every pooled connection is on the old file: reconnect them all.
        raise InvalidatePoolError("the database file was replaced")

    def _seen(self, ident: tuple[int, int]) -> None:
        """Note the file now at the path; a different one than before is a new generation."""
        with self._lock:
            if ident == self._current and not self._lost:
                return
            replaced = self._current is not None
            self._current = ident
            self._lost = False
            if replaced:
                self.generation += 1
        if replaced:
            log.warning(
                "the store's file %s was replaced (restored from a backup?); reading the "
                "new file, and dropping all that was read from the old",
                self.path,
            )


def _create_engine(
    url: URL,
    connect_timeout: float,
    pool_size: int,
    *,
    autocommit: bool = False,
    file: SqliteFile | None = None,
) -> Engine:
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.get_backend_name() == "sqlite":
        memory = _is_memory(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": max(connect_timeout, 5.0)},
            # One in-memory database is one connection: share it.
            poolclass=StaticPool if memory else None,
            **isolation,
        )
        if file is not None:
            file.attach(engine)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from pysqlite (its legacy mode does not BEGIN
            # before DDL or SELECT), so every SQLAlchemy transaction is a real one.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                # Readers never wait for the writer; durable at each checkpoint.
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        if not autocommit:

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        url,
        connect_args={
            "connect_timeout": max(1, round(connect_timeout)),
            # Shows in pg_stat_activity; a URL's own application_name wins.
            "application_name": url.query.get("application_name", "pdp"),
        },
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        **isolation,
    )


def _is_connection_error(exc: DBAPIError) -> bool:
    """Driver errors that mean "the database is not there" rather than "the query is wrong"."""
    # psycopg raises OperationalError for refused/closed/timed-out connections and
    # sqlite3 for a file it cannot open; "no such table" was handled before this.
    return isinstance(exc, OperationalError | InterfaceError)


def short_reason(text_: str) -> str:
    """A one-line, lowercase reason from a driver's message."""
    low = text_.lower()
    for needle, short in (
        ("connection refused", "connection refused"),
        ("timeout expired", "connection timed out"),
        ("timed out", "connection timed out"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("password authentication failed", "password authentication failed"),
        ("does not exist", None),
        ("server closed the connection", "the server closed the connection"),
        ("unable to open database file", "unable to open database file"),
        ("database is locked", "database is locked"),
    ):
        if needle in low:
            if short is None:
                break
            return short
    first = text_.strip().splitlines()[0] if text_.strip() else "unknown error"
    first = first.removeprefix("connection failed: ").strip()
    return first[:1].lower() + first[1:] if first else first


def _subject_row(
    key: str, now: datetime, attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    kind, ident = key.split(":", 1)
    return {
        "key": key,
        "type": kind,
        "id": ident,
        "attributes": dict(attributes or {}),
        "updated_at": now,
    }


def open_store(url: str | URL, **kwargs: Any) -> SqlStore:
    """Open the store at `url` (see `SqlStore`)."""
    return SqlStore(url, **kwargs)


__all__ = [
    "NOTIFY_CHANNEL",
    "Change",
    "Lookup",
    "SqlStore",
    "SubjectInfo",
    "WriteResult",
    "open_store",
]
