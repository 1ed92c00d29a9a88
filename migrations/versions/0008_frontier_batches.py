"""Batch API batches of escalations (SHIFTDOWN_FRONTIER_MODE=batch)

``frontier_batches`` holds each batch from the moment its documents are assigned (before
the provider knows of it, so that a worker dying between the two finds its own batch
again by its metadata instead of paying for a second); ``documents.frontier_batch_id``
is the batch that carries a document's request, cleared as its line is recorded;
``frontier_calls.batch_id`` the batch a billed call went in.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 22:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frontier_batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("provider_batch_id", sa.String(255), nullable=True, unique=True),
        sa.Column("input_file_id", sa.String(255), nullable=True),
        sa.Column("provider_status", sa.String(32), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    # Plain ALTER TABLE (SQLite cannot add a foreign key that way: the column alone
    # there; Postgres gets the constraint). A batch rebuild would break the views.
    op.add_column("documents", sa.Column("frontier_batch_id", sa.BigInteger(), nullable=True))
    op.create_index("ix_documents_frontier_batch_id", "documents", ["frontier_batch_id"])
    op.add_column("frontier_calls", sa.Column("batch_id", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(
            "fk_documents_frontier_batch_id",
            "documents",
            "frontier_batches",
            ["frontier_batch_id"],
            ["id"],
        )
        op.create_foreign_key(
            "fk_frontier_calls_batch_id", "frontier_calls", "frontier_batches", ["batch_id"], ["id"]
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("fk_frontier_calls_batch_id", "frontier_calls", type_="foreignkey")
        op.drop_constraint("fk_documents_frontier_batch_id", "documents", type_="foreignkey")
    op.drop_column("frontier_calls", "batch_id")
    op.drop_index("ix_documents_frontier_batch_id", "documents")
    op.drop_column("documents", "frontier_batch_id")
    op.drop_table("frontier_batches")
