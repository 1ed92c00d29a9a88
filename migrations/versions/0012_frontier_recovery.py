"""frontier recovery: one recovery pass at a time across every worker

``frontier_recovery`` holds one row: the document the recovery pass last sent as its
probe, or the id range of the chunk of parked documents it last sent once the frontier
answered again, and when. Every worker's pass reads and writes it under a Postgres
advisory lock, so a deployment has one recovery, not one per worker.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frontier_recovery",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("probe_id", sa.BigInteger(), nullable=True),
        sa.Column("chunk_from", sa.BigInteger(), nullable=True),
        sa.Column("chunk_to", sa.BigInteger(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("frontier_recovery")
