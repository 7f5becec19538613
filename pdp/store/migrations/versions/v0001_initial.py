"""The initial store: subjects, memberships, bindings, the store revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pdp.store.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pdp_subjects",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_pdp_subjects"),
    )
    op.create_index("ix_pdp_subjects_type", "pdp_subjects", ["type"])
    op.create_table(
        "pdp_memberships",
        sa.Column("group_key", sa.String(), nullable=False),
        sa.Column("member_key", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_key"],
            ["pdp_subjects.key"],
            name="fk_pdp_memberships_group_key_pdp_subjects",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_key"],
            ["pdp_subjects.key"],
            name="fk_pdp_memberships_member_key_pdp_subjects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_key", "member_key", name="pk_pdp_memberships"),
    )
    op.create_index("ix_pdp_memberships_member", "pdp_memberships", ["member_key", "group_key"])
    op.create_table(
        "pdp_bindings",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject"],
            ["pdp_subjects.key"],
            name="fk_pdp_bindings_subject_pdp_subjects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name="pk_pdp_bindings"),
        sa.UniqueConstraint("subject", "scope", "role", name="uq_pdp_bindings_subject_scope_role"),
    )
    op.create_index("ix_pdp_bindings_role", "pdp_bindings", ["role"])
    revision_table = op.create_table(
        "pdp_store_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pdp_store_revision"),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("pdp_store_revision")
    op.drop_index("ix_pdp_bindings_role", table_name="pdp_bindings")
    op.drop_table("pdp_bindings")
    op.drop_index("ix_pdp_memberships_member", table_name="pdp_memberships")
    op.drop_table("pdp_memberships")
    op.drop_index("ix_pdp_subjects_type", table_name="pdp_subjects")
    op.drop_table("pdp_subjects")
