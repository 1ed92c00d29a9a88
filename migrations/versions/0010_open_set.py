"""open set: a task may let documents end as "none of the labels"

``tasks.open_set`` marks such a task. A none outcome is a prediction without a label
(``predictions.label`` NULL), so per-label figures and views never count it as a label;
``document_labels`` gains ``outcome`` ('label' or 'none'; NULL while pending), and
``slm_frontier_agreement`` counts two none outcomes as agreeing (a null-safe comparison).

Making a column nullable rebuilds the table on SQLite, and SQLite refuses to rename a
table that views read, so there every view is dropped first and recreated as it was
(Postgres alters the column in place).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DOCUMENT_LABELS = """
CREATE VIEW document_labels AS
SELECT d.id AS document_id, d.run_id, d.external_id, d.state,
       d.final_stage AS source, p.label, p.confidence, p.model{outcome}
FROM documents d
LEFT JOIN predictions p ON p.document_id = d.id AND p.stage = d.final_stage
"""
OUTCOME = """,
       CASE WHEN p.id IS NULL THEN NULL WHEN p.label IS NULL THEN 'none' ELSE 'label' END
           AS outcome"""


def _set_label_nullable(nullable: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.alter_column("predictions", "label", existing_type=sa.String(255), nullable=nullable)
        return
    views = bind.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")
    ).all()
    for name, _ in views:
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("label", existing_type=sa.String(255), nullable=nullable)
    for _, sql in views:
        op.execute(sql)


AGREEMENT = """
CREATE VIEW slm_frontier_agreement AS
SELECT s.run_id, f.stage AS frontier_stage, count(*) AS documents_seen_by_both,
       sum(CASE WHEN {same} THEN 1 ELSE 0 END) AS agreed,
       1.0 * sum(CASE WHEN {same} THEN 1 ELSE 0 END) / count(*) AS agreement
FROM predictions s
JOIN predictions f ON f.document_id = s.document_id AND f.stage IN ('frontier', 'audit')
WHERE s.stage = 'slm'
GROUP BY s.run_id, f.stage
"""


def _agreement(null_safe: bool) -> None:
    op.execute("DROP VIEW slm_frontier_agreement")
    if not null_safe:
        same = "s.label = f.label"
    elif op.get_bind().dialect.name == "sqlite":
        same = "s.label IS f.label"
    else:
        same = "s.label IS NOT DISTINCT FROM f.label"
    op.execute(AGREEMENT.format(same=same))


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("open_set", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute("DROP VIEW document_labels")
    _set_label_nullable(True)
    op.execute(DOCUMENT_LABELS.format(outcome=OUTCOME))
    _agreement(null_safe=True)


def downgrade() -> None:
    _agreement(null_safe=False)
    op.execute("DROP VIEW document_labels")
    # A none outcome has no label to go back to: those predictions are dropped.
    op.execute("DELETE FROM predictions WHERE label IS NULL")
    _set_label_nullable(False)
    op.execute(DOCUMENT_LABELS.format(outcome=""))
    op.execute("ALTER TABLE tasks DROP COLUMN open_set")
