"""A run's report: volume, escalation, throughput, latency, frontier spend, and what
sending every document to the frontier model would have cost instead.

Every figure comes from rows in the store: recorded latencies, recorded tokens and the
price table. Nothing is taken from the Celery backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shiftdown.costs import cost_usd
from shiftdown.errors import ConfigError
from shiftdown.prompts import estimate_tokens
from shiftdown.schema import (
    Document,
    FrontierCall,
    InputError,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
)
from shiftdown.settings import Settings
from shiftdown.taxonomy import Taxonomy


def _utc(ts: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def latest_run_id(session: Session) -> int:
    """The newest run's id."""
    run_id = session.scalar(select(func.max(Run.id)))
    if run_id is None:
        raise ConfigError("no runs yet: submit documents first")
    return int(run_id)


def documents_by_state(session: Session, run_id: int) -> dict[str, int]:
    """How many of the run's documents are in each state."""
    return dict(
        session.execute(
            select(Document.state, func.count())
            .where(Document.run_id == run_id)
            .group_by(Document.state)
        ).all()
    )


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "n": 0}
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "n": len(values)}


def run_report(session: Session, run_id: int, settings: Settings) -> dict[str, Any]:
    """Every figure of the report for one run, as plain JSON-ready data."""
    run = session.get(Run, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id}")
    task = session.get_one(Task, run.task_name)
    version = session.get(ModelVersion, run.model_version_id)
    taxonomy = Taxonomy.from_data(task.taxonomy)

    states = documents_by_state(session, run_id)
    n_docs = sum(states.values())
    final_by_stage = dict(
        session.execute(
            select(Document.final_stage, func.count())
            .where(Document.run_id == run_id, Document.final_stage.is_not(None))
            .group_by(Document.final_stage)
        ).all()
    )
    n_final = sum(final_by_stage.values())
    latencies: dict[str, list[float]] = {Stage.SLM: [], Stage.FRONTIER: []}
    escalated = 0
    for stage, latency, confidence in session.execute(
        select(Prediction.stage, Prediction.latency_ms, Prediction.confidence).where(
            Prediction.run_id == run_id
        )
    ):
        latencies.setdefault(stage, []).append(latency)
        if stage == Stage.SLM and (confidence or 0.0) < run.threshold:
            escalated += 1
    n_slm = len(latencies[Stage.SLM])

    first_doc, last_pred = session.execute(
        select(
            select(func.min(Document.created_at))
            .where(Document.run_id == run_id)
            .scalar_subquery(),
            select(func.max(Prediction.created_at))
            .where(Prediction.run_id == run_id)
            .scalar_subquery(),
        )
    ).one()
    start, end = _utc(first_doc), _utc(last_pred)
    elapsed = (end - start).total_seconds() if start and end else None

    calls = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(FrontierCall.prompt_tokens), 0),
            func.coalesce(func.sum(FrontierCall.completion_tokens), 0),
            func.coalesce(func.sum(FrontierCall.cost_usd), 0.0),
            func.count(FrontierCall.cost_usd),
        ).where(FrontierCall.run_id == run_id)
    ).one()
    n_calls, prompt_tokens, completion_tokens, spent, n_priced = calls
    ok_tokens = session.execute(
        select(
            func.count(),
            func.avg(FrontierCall.prompt_tokens),
            func.avg(FrontierCall.completion_tokens),
        ).where(FrontierCall.run_id == run_id, FrontierCall.status == "ok")
    ).one()
    price_model = settings.frontier_price_model or settings.frontier_model
    if ok_tokens[0]:
        basis = f"mean tokens of {ok_tokens[0]} recorded frontier calls"
        mean_prompt, mean_completion = float(ok_tokens[1] or 0), float(ok_tokens[2] or 0)
    else:
        mean_chars = session.scalar(
            select(func.avg(func.length(Document.text))).where(Document.run_id == run_id)
        )
        mean_prompt, mean_completion = estimate_tokens(taxonomy, float(mean_chars or 0))
        basis = "estimated from text length (no frontier call recorded)"
    per_doc = cost_usd(
        price_model, round(mean_prompt), round(mean_completion), settings.price_table()
    )
    counterfactual = per_doc * n_docs if per_doc is not None else None
    spent = float(spent or 0.0)
    return {
        "run_id": run.id,
        "task": run.task_name,
        "model": f"v{version.version}" if version else None,
        "threshold": run.threshold,
        "source": run.source,
        "documents": n_docs,
        "rejected": session.scalar(select(func.count()).where(InputError.run_id == run_id)),
        "states": states,
        "final": n_final,
        "final_by_stage": final_by_stage,
        "escalated": escalated,
        "escalation_rate": round(escalated / n_slm, 4) if n_slm else None,
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "docs_per_s": round(n_final / elapsed, 2) if elapsed else None,
        "latency": {stage: _percentiles(values) for stage, values in latencies.items()},
        "frontier": {
            "calls": n_calls,
            "unpriced_calls": n_calls - n_priced,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "usd": round(spent, 6),
            "price_model": price_model,
        },
        "usd_per_1k_docs": round(spent / n_docs * 1000, 6) if n_docs else None,
        "counterfactual": {
            "all_frontier_usd": round(counterfactual, 6) if counterfactual is not None else None,
            "all_frontier_usd_per_1k_docs": round(per_doc * 1000, 6)
            if per_doc is not None
            else None,
            "saving_pct": round(100 * (1 - spent / counterfactual), 2) if counterfactual else None,
            "basis": basis,
        },
    }


def run_series(session: Session, run_id: int, settings: Settings) -> dict[str, Any]:
    """Time series and distributions behind the report's charts."""
    run = session.get(Run, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id}")
    rows = session.execute(
        select(Prediction.created_at, Prediction.stage, Prediction.latency_ms, Prediction.cost_usd)
        .where(Prediction.run_id == run_id)
        .order_by(Prediction.created_at)
    ).all()
    start = _utc(run.created_at)
    per_doc = run_report(session, run_id, settings)["counterfactual"][
        "all_frontier_usd_per_1k_docs"
    ]
    cumulative, spent, seen = [], 0.0, 0
    for created, stage, _, cost in rows:
        if stage == Stage.SLM:
            seen += 1
        spent += cost or 0.0
        t = (_utc(created) - start).total_seconds() if start and created else 0.0  # type: ignore[operator]
        cumulative.append((round(t, 3), spent, seen * (per_doc or 0.0) / 1000))
    by_label = [
        (label, n, esc)
        for label, n, esc in session.execute(
            select(
                Prediction.label,
                func.count(),
                func.sum(case((Prediction.confidence < run.threshold, 1), else_=0)),
            )
            .where(Prediction.run_id == run_id, Prediction.stage == Stage.SLM)
            .group_by(Prediction.label)
        )
    ]
    return {
        "slm_times": [c[0] for c, r in zip(cumulative, rows, strict=True) if r[1] == Stage.SLM],
        "cumulative_cost": cumulative,
        "escalation_by_label": sorted(by_label, key=lambda r: -(r[2] or 0) / r[1]),
        "latency_ms": {
            stage: [r[2] for r in rows if r[1] == stage] for stage in (Stage.SLM, Stage.FRONTIER)
        },
    }
