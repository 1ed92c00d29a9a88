"""unfamiliar documents: why the SLM escalated, and how unlike its training set a
document was

``predictions.unfamiliarity`` holds the SLM's unfamiliarity score (``models.familiarity``;
NULL where the model has no familiarity file), ``predictions.unfamiliar`` whether it
passed the model's threshold, and ``predictions.escalation_reason`` why an escalated
document was escalated: 'confidence' (below its threshold) or 'unfamiliar' (confident,
but unlike anything the model was trained on). The view ``escalation_reasons`` counts
them per run.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ESCALATION_REASONS = """
CREATE VIEW escalation_reasons AS
SELECT p.run_id, count(*) AS documents,
       sum(CASE WHEN p.escalated THEN 1 ELSE 0 END) AS escalated,
       sum(CASE WHEN p.escalation_reason = 'confidence' THEN 1 ELSE 0 END) AS low_confidence,
       sum(CASE WHEN p.escalation_reason = 'unfamiliar' THEN 1 ELSE 0 END)
           AS unfamiliar_escalated,
       sum(CASE WHEN p.unfamiliar THEN 1 ELSE 0 END) AS unfamiliar,
       1.0 * sum(CASE WHEN p.unfamiliar THEN 1 ELSE 0 END) / count(*) AS unfamiliar_rate,
       avg(p.unfamiliarity) AS mean_unfamiliarity
FROM predictions p
WHERE p.stage = 'slm'
GROUP BY p.run_id
"""


def upgrade() -> None:
    op.add_column("predictions", sa.Column("unfamiliarity", sa.Float(), nullable=True))
    op.add_column("predictions", sa.Column("unfamiliar", sa.Boolean(), nullable=True))
    op.add_column("predictions", sa.Column("escalation_reason", sa.String(16), nullable=True))
    op.execute(ESCALATION_REASONS)


def downgrade() -> None:
    op.execute("DROP VIEW escalation_reasons")
    # SQLite drops a column in place (3.35+) unless a view reads it; none does now.
    for column in ("escalation_reason", "unfamiliar", "unfamiliarity"):
        op.execute(f"ALTER TABLE predictions DROP COLUMN {column}")
