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
    "escalation_by_day",
    "frontier_cost_by_day",
    "latency_percentiles",
    "slm_frontier_agreement",
]


def _dialect_sql() -> dict[str, str]:
    """Date buckets and time differences, which Postgres and SQLite spell differently."""
    if op.get_bind().dialect.name == "postgresql":
        return {
            "minute": "date_trunc('minute', p.created_at)",
            "call_day": "date_trunc('day', c.created_at)::date",
            "pred_day": "date_trunc('day', p.created_at)::date",
            "seconds": "extract(epoch FROM ({end}) - ({start}))",
        }
    return {
        "minute": "strftime('%Y-%m-%d %H:%M', p.created_at)",
        "call_day": "date(c.created_at)",
        "pred_day": "date(p.created_at)",
        "seconds": "(julianday({end}) - julianday({start})) * 86400.0",
    }


def upgrade() -> None:
    sql = _dialect_sql()
    minute, day, pred_day = sql["minute"], sql["call_day"], sql["pred_day"]
    elapsed = sql["seconds"].format(
        end="(SELECT max(p.created_at) FROM predictions p WHERE p.run_id = r.id)",
        start="(SELECT min(d.created_at) FROM documents d WHERE d.run_id = r.id)",
    )
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
        CREATE VIEW latency_percentiles AS
        WITH ranked AS (
            SELECT run_id, stage, latency_ms,
                   row_number() OVER (PARTITION BY run_id, stage ORDER BY latency_ms) AS rn,
                   count(*) OVER (PARTITION BY run_id, stage) AS n
            FROM predictions
        )
        SELECT run_id, stage, n AS documents,
               min(CASE WHEN rn >= 0.5 * n THEN latency_ms END) AS p50_ms,
               min(CASE WHEN rn >= 0.95 * n THEN latency_ms END) AS p95_ms,
               max(latency_ms) AS max_ms
        FROM ranked
        GROUP BY run_id, stage, n
        """
    )
    op.execute(
        f"""
        CREATE VIEW escalation_by_day AS
        SELECT {pred_day} AS day, r.task_name, count(*) AS documents,
               sum(CASE WHEN p.confidence < r.threshold THEN 1 ELSE 0 END) AS escalated,
               1.0 * sum(CASE WHEN p.confidence < r.threshold THEN 1 ELSE 0 END) / count(*)
                   AS escalation_rate
        FROM predictions p JOIN runs r ON r.id = p.run_id
        WHERE p.stage = 'slm'
        GROUP BY {pred_day}, r.task_name
        """
    )
    op.execute(
        f"""
        CREATE VIEW run_summary AS
        SELECT r.id AS run_id, r.task_name, r.created_at, r.threshold,
               (SELECT count(*) FROM documents d WHERE d.run_id = r.id) AS documents,
               (SELECT count(*) FROM documents d
                WHERE d.run_id = r.id AND d.final_stage IS NOT NULL)
                   / nullif({elapsed}, 0) AS docs_per_s,
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
