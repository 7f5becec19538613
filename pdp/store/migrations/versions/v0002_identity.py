"""Identity: API keys, sessions, token revocations and per-subject token cut-offs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pdp.store.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pdp_api_keys",
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("scheme", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("rotated_to", sa.String(), nullable=True),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("prefix", name="pk_pdp_api_keys"),
    )
    op.create_index("ix_pdp_api_keys_subject", "pdp_api_keys", ["subject", "created_at"])
    op.create_table(
        "pdp_sessions",
        sa.Column("id_hash", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("idle_timeout_s", sa.Integer(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name="pk_pdp_sessions"),
    )
    op.create_index("ix_pdp_sessions_subject", "pdp_sessions", ["subject", "created_at"])
    op.create_index("ix_pdp_sessions_expires", "pdp_sessions", ["expires_at"])
    op.create_table(
        "pdp_token_revocations",
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("jti", sa.String(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("issuer", "jti", name="pk_pdp_token_revocations"),
    )
    op.create_table(
        "pdp_token_cutoffs",
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("subject", name="pk_pdp_token_cutoffs"),
    )


def downgrade() -> None:
    op.drop_table("pdp_token_cutoffs")
    op.drop_table("pdp_token_revocations")
    op.drop_index("ix_pdp_sessions_expires", table_name="pdp_sessions")
    op.drop_index("ix_pdp_sessions_subject", table_name="pdp_sessions")
    op.drop_table("pdp_sessions")
    op.drop_index("ix_pdp_api_keys_subject", table_name="pdp_api_keys")
    op.drop_table("pdp_api_keys")
