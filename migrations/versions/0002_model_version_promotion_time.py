"""model version promotion time (for rollback)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:13:38
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))
    # Versions served today count as promoted when they were registered.
    op.execute(
        "UPDATE model_versions SET promoted_at = created_at "
        "WHERE id IN (SELECT model_version_id FROM tasks WHERE model_version_id IS NOT NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("promoted_at")
