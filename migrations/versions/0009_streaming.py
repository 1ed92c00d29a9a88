"""streaming: a document's metadata from its producer, and the results outbox

``documents.meta`` holds what an application producer or a stream entry attaches to a
document (returned with its label). ``result_outbox`` holds one row per document settled
while ``SHIFTDOWN_RESULTS_STREAM`` is set, written in the transaction that settles it and
deleted once its result is on the Redis results stream: a row left behind (the broker
was away) is appended by the workers' sweep.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("documents", sa.Column("meta", Json, nullable=True))
    op.create_table(
        "result_outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("document_id", BigId, sa.ForeignKey("documents.id"), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_result_outbox_created_at", "result_outbox", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_result_outbox_created_at", table_name="result_outbox")
    op.drop_table("result_outbox")
    # Plain ALTER TABLE: a batch rebuild of documents would break the views on SQLite.
    op.drop_column("documents", "meta")
