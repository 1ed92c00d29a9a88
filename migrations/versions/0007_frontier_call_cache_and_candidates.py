"""frontier calls record the prompt tokens served from the provider's cache and how
many labels a narrowed request offered

``cached_tokens`` (OpenAI's ``usage.prompt_tokens_details.cached_tokens``) are priced at
the cached-input rate; ``offered`` is the number of the SLM's top labels a narrowed
request offered (NULL: the whole taxonomy), so SQL can tell the two kinds of call apart.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends (SQLite 3.35+ drops columns itself): a batch
# rebuild of frontier_calls would break the reporting views that read it.


def upgrade() -> None:
    op.add_column(
        "frontier_calls",
        sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("frontier_calls", sa.Column("offered", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("frontier_calls", "offered")
    op.drop_column("frontier_calls", "cached_tokens")
