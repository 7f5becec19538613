"""The store's tables, as SQLAlchemy 2.x typed declarative models.

    pdp_subjects        key (`type:id`) → type, id, attributes (JSON)
    pdp_memberships     (group_key, member_key); a group is a subject, groups nest
    pdp_bindings        subject, role, scope, expires_at, created_by, created_at
    pdp_store_revision  one row: the revision every change bumps

and the durable half of the identity resolvers (`pdp.store.identity`), which never
touch the revision (a new API key or session changes no decision's roles):

    pdp_api_keys            prefix → digest of the key, subject, scopes, lifetime
    pdp_sessions            hash of the session id → subject, lifetime, idle timeout
    pdp_token_revocations   (issuer, jti) of revoked bearer tokens, until they expire
    pdp_token_cutoffs       subject → tokens issued before this time are revoked

Subjects are referenced by their `type:id` key rather than a surrogate integer: the
lookup then needs no join to `pdp_subjects`, and the key is what requests carry.
The indexes are chosen for the one hot query (see `pdp.store.sql.lookup_sql`):
upward group traversal uses `ix_pdp_memberships_member` (member_key, group_key);
bindings are found through the unique index on (subject, scope, role).

The schema itself is created by the alembic migrations in `pdp/store/migrations/`;
these models must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every database.

    SQLite has no time zone type: SQLAlchemy would store an aware datetime's wall
    time and return it naive. Storing UTC always, and marking values read back as
    UTC, makes `expires_at > :now` compare correctly on SQLite (as text, which sorts
    like time because the format is fixed) and on PostgreSQL (timestamptz).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware (UTC) time")
        value = value.astimezone(UTC)
        # SQLite's DATETIME text form has no offset; keep the wall time in UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Subject(Base):
    """A user, service or group, and what the PDP knows about it without being told."""

    __tablename__ = "pdp_subjects"

    key: Mapped[str] = mapped_column(String, primary_key=True)  # `type:id`
    type: Mapped[str] = mapped_column(String, index=True)
    id: Mapped[str] = mapped_column(String)
    # Trusted attributes: they win over the properties a request sends.
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    """`member_key` belongs to the group `group_key` (which may itself be a member)."""

    __tablename__ = "pdp_memberships"

    group_key: Mapped[str] = mapped_column(
        String, ForeignKey("pdp_subjects.key", ondelete="CASCADE"), primary_key=True
    )
    member_key: Mapped[str] = mapped_column(
        String, ForeignKey("pdp_subjects.key", ondelete="CASCADE"), primary_key=True
    )
    created_by: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The lookup walks upward (member → its groups): this index answers each step.
        Index("ix_pdp_memberships_member", "member_key", "group_key"),
    )


class Binding(Base):
    """`subject` holds `role` within `scope` until `expires_at` (None: for good)."""

    __tablename__ = "pdp_bindings"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String, ForeignKey("pdp_subjects.key", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String)
    scope: Mapped[str] = mapped_column(String)  # global | tenant/<t> | <type>/<id>
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Unique per (subject, scope, role); column order serves the lookup, which
        # filters on subject = ? AND scope IN (...).
        UniqueConstraint("subject", "scope", "role", name="uq_pdp_bindings_subject_scope_role"),
        # For `bindings list --role`. No index on scope alone, on purpose: planners
        # would use it for the lookup and read every binding in `global` (see sql.py).
        Index("ix_pdp_bindings_role", "role"),
    )


class StoreRevision(Base):
    """A single row (id 1) whose counter every change bumps in the same transaction."""

    __tablename__ = "pdp_store_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key: never the secret, only its keyed digest (see `pdp.identity.apikeys`).

    `subject` is the `type:id` key, deliberately not a foreign key to `pdp_subjects`: a
    key may exist for a subject the bindings store knows nothing about, and making a
    key must not write to the bindings data (whose every change bumps the revision).
    """

    __tablename__ = "pdp_api_keys"

    prefix: Mapped[str] = mapped_column(String, primary_key=True)  # public, 12 chars
    digest: Mapped[bytes] = mapped_column(LargeBinary)  # HMAC-SHA256, 32 bytes
    # Which MAC and pepper made `digest`: lets a later pepper rotation tell keys apart.
    scheme: Mapped[str] = mapped_column(String)
    subject: Mapped[str] = mapped_column(String)  # `type:id`
    name: Mapped[str] = mapped_column(String)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated_to: Mapped[str | None] = mapped_column(String)  # prefix of the replacement
    created_by: Mapped[str | None] = mapped_column(String)

    __table_args__ = (Index("ix_pdp_api_keys_subject", "subject", "created_at"),)


class Session(Base):
    """A browser session: the SHA-256 of its id (never the id), subject and lifetime."""

    __tablename__ = "pdp_sessions"

    id_hash: Mapped[str] = mapped_column(String, primary_key=True)  # 64 hex digits
    subject: Mapped[str] = mapped_column(String)  # `type:id`
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    idle_timeout_s: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_pdp_sessions_subject", "subject", "created_at"),
        # For `pdp sessions purge`: sessions past their absolute expiry.
        Index("ix_pdp_sessions_expires", "expires_at"),
    )


class TokenRevocation(Base):
    """A revoked bearer token, by `jti`; `issuer` "" means the jti of any issuer."""

    __tablename__ = "pdp_token_revocations"

    issuer: Mapped[str] = mapped_column(String, primary_key=True)
    jti: Mapped[str] = mapped_column(String, primary_key=True)
    # The token's own expiry: past it (and the leeway) the row can be purged.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String)


class TokenCutoff(Base):
    """Every bearer token of `subject` issued before `not_before` is revoked."""

    __tablename__ = "pdp_token_cutoffs"

    subject: Mapped[str] = mapped_column(String, primary_key=True)  # `type:id`
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String)
