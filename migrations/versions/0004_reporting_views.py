"""reporting views: throughput per minute, escalation by label, frontier cost by day,
run summary, SLM-frontier agreement

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:16:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEWS = [
    "run_summary",
    "throughput_per_minute",
    "escalation_by_label",
    "frontier_cost_by_day",
    "slm_frontier_agreement",
]


def _buckets() -> tuple[str, str]:
    """SQL for the minute and the day of ``created_at`` in this dialect."""
    if op.get_bind().dialect.name == "postgresql":
        return "date_trunc('minute', p.created_at)", "date_trunc('day', c.created_at)::date"
    return "strftime('%Y-%m-%d %H:%M', p.created_at)", "date(c.created_at)"


def upgrade() -> None:
    minute, day = _buckets()
    op.execute(
        f"""
        CREATE VIEW throughput_per_minute AS
        SELECT p.run_id, p.stage, {minute} AS minute, count(*) AS predictions,
               avg(p.latency_ms) AS mean_latency_ms
        FROM predictions p
        GROUP BY p.run_id, p.stage, {minute}
        """
    )
    op.execute(
        """
        CREATE VIEW escalation_by_label AS
        SELECT p.run_id, p.label AS slm_label, count(*) AS documents,
               sum(CASE WHEN p.confidence < r.threshold THEN 1 ELSE 0 END) AS escalated,
               1.0 * sum(CASE WHEN p.confidence < r.threshold THEN 1 ELSE 0 END) / count(*)
                   AS escalation_rate
        FROM predictions p JOIN runs r ON r.id = p.run_id
        WHERE p.stage = 'slm'
        GROUP BY p.run_id, p.label
        """
    )
    op.execute(
        f"""
        CREATE VIEW frontier_cost_by_day AS
        SELECT {day} AS day, c.model, count(*) AS calls,
               sum(CASE WHEN c.status = 'ok' THEN 1 ELSE 0 END) AS ok_calls,
               sum(c.prompt_tokens) AS prompt_tokens,
               sum(c.completion_tokens) AS completion_tokens,
               sum(c.cost_usd) AS usd
        FROM frontier_calls c
        GROUP BY {day}, c.model
        """
    )
    op.execute(
        """
        CREATE VIEW run_summary AS
        SELECT r.id AS run_id, r.task_name, r.created_at, r.threshold,
               (SELECT count(*) FROM documents d WHERE d.run_id = r.id) AS documents,
               (SELECT count(*) FROM documents d WHERE d.run_id = r.id AND d.final_stage = 'slm')
                   AS final_slm,
               (SELECT count(*) FROM documents d
                WHERE d.run_id = r.id AND d.final_stage = 'frontier') AS final_frontier,
               (SELECT count(*) FROM input_errors e WHERE e.run_id = r.id) AS rejected,
               (SELECT coalesce(sum(c.cost_usd), 0) FROM frontier_calls c WHERE c.run_id = r.id)
                   AS frontier_usd,
               1000.0 * (SELECT coalesce(sum(c.cost_usd), 0) FROM frontier_calls c
                         WHERE c.run_id = r.id)
                   / nullif((SELECT count(*) FROM documents d WHERE d.run_id = r.id), 0)
                   AS usd_per_1k_documents,
               (SELECT avg(c.cost_usd) FROM frontier_calls c
                WHERE c.run_id = r.id AND c.status = 'ok')
                   * (SELECT count(*) FROM documents d WHERE d.run_id = r.id)
                   AS all_frontier_usd
        FROM runs r
        """
    )
    op.execute(
        """
        CREATE VIEW slm_frontier_agreement AS
        SELECT s.run_id, count(*) AS documents_seen_by_both,
               sum(CASE WHEN s.label = f.label THEN 1 ELSE 0 END) AS agreed,
               1.0 * sum(CASE WHEN s.label = f.label THEN 1 ELSE 0 END) / count(*) AS agreement
        FROM predictions s
        JOIN predictions f ON f.document_id = s.document_id AND f.stage = 'frontier'
        WHERE s.stage = 'slm'
        GROUP BY s.run_id
        """
    )


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW {view}")
