"""a partial index on the unsettled documents' last change, for the workers' automatic
reconciliation sweep

The sweep asks for the oldest queued or escalated documents unchanged for a while; at
tens of millions of documents, almost all settled, a partial index keeps that a short
range scan over the few that are not.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UNSETTLED = sa.text("state IN ('queued', 'escalated')")


def upgrade() -> None:
    op.create_index(
        "ix_documents_unsettled_updated_at",
        "documents",
        ["updated_at"],
        postgresql_where=UNSETTLED,
        sqlite_where=UNSETTLED,
    )


def downgrade() -> None:
    op.drop_index("ix_documents_unsettled_updated_at", table_name="documents")
