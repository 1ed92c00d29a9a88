"""escalation decisions recorded per prediction, SLM bypass reason per run, audit stage,
frontier lease per document

With per-label thresholds the run's single threshold no longer says which documents
were escalated, so the SLM worker records its decision and the views read it (rows
written before this revision fall back to the run threshold). Audit predictions (a
sample of kept documents also sent to the frontier) join the agreement view. A
document's frontier lease lets a second delivery of the same task see that a call is
already in flight (a task that outlived the broker's visibility timeout) and not pay
for it twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_RULE = "p.confidence < r.threshold"
NEW_RULE = "coalesce(p.escalated, p.confidence < r.threshold)"


def _create_views(rule: str, pred_day: str, with_audit: bool) -> None:
    escalated = f"sum(CASE WHEN {rule} THEN 1 ELSE 0 END)"
    op.execute(
        f"""
        CREATE VIEW escalation_by_label AS
        SELECT p.run_id, p.label AS slm_label, count(*) AS documents,
               {escalated} AS escalated,
               1.0 * {escalated} / count(*) AS escalation_rate
        FROM predictions p JOIN runs r ON r.id = p.run_id
        WHERE p.stage = 'slm'
        GROUP BY p.run_id, p.label
        """
    )
    op.execute(
        f"""
        CREATE VIEW escalation_by_day AS
        SELECT {pred_day} AS day, r.task_name, count(*) AS documents,
               {escalated} AS escalated,
               1.0 * {escalated} / count(*) AS escalation_rate
        FROM predictions p JOIN runs r ON r.id = p.run_id
        WHERE p.stage = 'slm'
        GROUP BY {pred_day}, r.task_name
        """
    )
    # 'frontier' rows are escalated documents (the hard ones); 'audit' rows are a random
    # sample of kept ones, whose agreement measures the kept accuracy in production.
    stage_column = "f.stage AS frontier_stage, " if with_audit else ""
    stages = "('frontier', 'audit')" if with_audit else "('frontier')"
    group = "s.run_id, f.stage" if with_audit else "s.run_id"
    op.execute(
        f"""
        CREATE VIEW slm_frontier_agreement AS
        SELECT s.run_id, {stage_column}count(*) AS documents_seen_by_both,
               sum(CASE WHEN s.label = f.label THEN 1 ELSE 0 END) AS agreed,
               1.0 * sum(CASE WHEN s.label = f.label THEN 1 ELSE 0 END) / count(*) AS agreement
        FROM predictions s
        JOIN predictions f ON f.document_id = s.document_id AND f.stage IN {stages}
        WHERE s.stage = 'slm'
        GROUP BY {group}
        """
    )


def _pred_day() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "date_trunc('day', p.created_at)::date"
    return "date(p.created_at)"


def _drop_views() -> None:
    for view in ("slm_frontier_agreement", "escalation_by_day", "escalation_by_label"):
        op.execute(f"DROP VIEW {view}")


def upgrade() -> None:
    _drop_views()
    op.add_column("predictions", sa.Column("escalated", sa.Boolean(), nullable=True))
    op.add_column("runs", sa.Column("slm_bypass", sa.Text(), nullable=True))
    op.add_column(
        "documents", sa.Column("frontier_lease_until", sa.DateTime(timezone=True), nullable=True)
    )
    _create_views(NEW_RULE, _pred_day(), with_audit=True)


def downgrade() -> None:
    _drop_views()
    # Native DROP COLUMN (SQLite 3.35+, Postgres): no table rebuild under the other views.
    op.execute("ALTER TABLE documents DROP COLUMN frontier_lease_until")
    op.execute("ALTER TABLE runs DROP COLUMN slm_bypass")
    op.execute("ALTER TABLE predictions DROP COLUMN escalated")
    _create_views(OLD_RULE, _pred_day(), with_audit=False)
