"""teacher examples

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:15:12.907997
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teacher_examples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_name", sa.String(length=100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column(
            "frontier_call_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["frontier_call_id"],
            ["frontier_calls.id"],
            name=op.f("fk_teacher_examples_frontier_call_id_frontier_calls"),
        ),
        sa.ForeignKeyConstraint(
            ["task_name"], ["tasks.name"], name=op.f("fk_teacher_examples_task_name_tasks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher_examples")),
        sa.UniqueConstraint("task_name", "text_sha256", name="uq_teacher_examples_task_text"),
    )
    with op.batch_alter_table("teacher_examples", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teacher_examples_task_name"), ["task_name"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("teacher_examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teacher_examples_task_name"))

    op.drop_table("teacher_examples")
