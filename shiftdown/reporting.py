"""A run's report: volume, escalation, throughput, latency, frontier spend, and what
sending every document to the frontier model would have cost instead.

Every figure comes from rows in the store: recorded latencies, recorded tokens and the
price table. Nothing is taken from the Celery backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from shiftdown.drift import MIN_DOCUMENTS, DriftCheck
from shiftdown.errors import ConfigError
from shiftdown.savings import break_even, counterfactual, projection
from shiftdown.schema import (
    DocState,
    Document,
    FrontierCall,
    InputError,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
    as_utc,
)
from shiftdown.settings import Settings
from shiftdown.taxonomy import Taxonomy


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else as_utc(ts)


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


def latency_percentiles(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """p50 and p95 latency per stage (nearest rank, as the ``latency_percentiles`` view),
    ranked in the store."""
    ranked = (
        select(
            Prediction.stage,
            Prediction.latency_ms,
            func.row_number()
            .over(partition_by=Prediction.stage, order_by=Prediction.latency_ms)
            .label("rn"),
            func.count().over(partition_by=Prediction.stage).label("n"),
        )
        .where(Prediction.run_id == run_id)
        .subquery()
    )
    figures: dict[str, dict[str, Any]] = {
        stage: {"p50_ms": None, "p95_ms": None, "n": 0} for stage in (Stage.SLM, Stage.FRONTIER)
    }
    for stage, n, p50, p95 in session.execute(
        select(
            ranked.c.stage,
            ranked.c.n,
            func.min(case((ranked.c.rn >= 0.5 * ranked.c.n, ranked.c.latency_ms))),
            func.min(case((ranked.c.rn >= 0.95 * ranked.c.n, ranked.c.latency_ms))),
        ).group_by(ranked.c.stage, ranked.c.n)
    ):
        figures[stage] = {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "n": n}
    return figures


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
    escalated, n_slm = escalation_counts(session, run)
    escalation_rate = escalated / n_slm if n_slm else None
    audit = agreement(session, run_id, Stage.AUDIT)

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
    spent = float(spent or 0.0)
    cf = counterfactual(session, run, taxonomy, states, spent, settings)
    per_doc = cf["all_frontier_usd_per_1k_docs"]
    ahead = projection(
        session, run, taxonomy, states, spent, escalation_rate, cf["all_frontier_usd"], settings
    )
    # Break-even at what the run will have cost once its waiting documents are paid for.
    final_spend = ahead["projected_usd"] if ahead and "projected_usd" in ahead else spent
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
        "escalation_rate": round(escalation_rate, 4) if escalation_rate is not None else None,
        "slm_bypass": run.slm_bypass,
        "parked": parked_reasons(session, run_id),
        "agreement": {
            "audited": audit,
            "escalated": agreement(session, run_id, Stage.FRONTIER),
        },
        "drift": [
            c.as_dict()
            for c in drift_checks(session, run, version, escalation_rate, n_slm, audit, settings)
        ],
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "docs_per_s": round(n_final / elapsed, 2) if elapsed else None,
        "latency": latency_percentiles(session, run_id),
        "frontier": {
            "calls": n_calls,
            "unpriced_calls": n_calls - n_priced,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "usd": round(spent, 6),
            "price_model": settings.frontier_price_model or settings.frontier_model,
        },
        "usd_per_1k_docs": round(spent / n_docs * 1000, 6) if n_docs else None,
        "counterfactual": cf,
        "projection": ahead,
        "break_even": break_even(
            session,
            run.task_name,
            version,
            final_spend / n_docs if n_docs else None,
            per_doc / 1000 if per_doc is not None else None,
            settings,
        ),
    }


def parked_reasons(session: Session, run_id: int) -> dict[str, int]:
    """Documents waiting for the frontier, by why they wait (a budget cap, or none set)."""
    rows = session.execute(
        select(Document.error, func.count())
        .where(Document.run_id == run_id, Document.state == DocState.AWAITING_FRONTIER)
        .group_by(Document.error)
    ).all()
    return {reason or "no frontier configured": n for reason, n in rows}


def agreement(session: Session, run_id: int, stage: str) -> dict[str, Any]:
    """How often the SLM's label matches the frontier's at ``stage`` in this run:
    ``frontier`` for escalated documents, ``audit`` for the sample of kept ones."""
    slm, other = aliased(Prediction), aliased(Prediction)
    seen, agreed = session.execute(
        select(func.count(), func.sum(case((slm.label == other.label, 1), else_=0)))
        .select_from(slm)
        .join(other, (other.document_id == slm.document_id) & (other.stage == stage))
        .where(slm.run_id == run_id, slm.stage == Stage.SLM)
    ).one()
    return {
        "documents": int(seen or 0),
        "agreement": round(int(agreed or 0) / seen, 4) if seen else None,
    }


def _earlier_runs(session: Session, run: Run) -> list[Run]:
    return list(
        session.scalars(
            select(Run).where(
                Run.task_name == run.task_name,
                Run.model_version_id == run.model_version_id,
                Run.id < run.id,
            )
        )
    )


def drift_checks(
    session: Session,
    run: Run,
    version: ModelVersion | None,
    escalation_rate: float | None,
    n_slm: int,
    audit: dict[str, Any],
    settings: Settings,
) -> list[DriftCheck]:
    """The run's escalation rate and audited agreement against their references: the
    version's held-out figures when a policy is stored, else its earlier runs."""
    fitted = ((version.manifest or {}).get("policy") or {}).get("fitted", {}) if version else {}
    if fitted:
        basis = kept_basis = "held-out data of the policy"
        expected_rate, expected_kept = fitted.get("escalation_rate"), fitted.get("kept_accuracy")
    else:
        earlier = [run_report_basics(session, r) for r in _earlier_runs(session, run)]
        rates = [e for e, n, _ in earlier if e is not None and n >= MIN_DOCUMENTS]
        kept = [a for _, _, a in earlier if a is not None]
        basis = f"{len(rates)} earlier run(s) of this model"
        kept_basis = f"{len(kept)} earlier run(s) of this model"
        if not rates:
            basis = (
                f"no earlier run of {MIN_DOCUMENTS}+ documents to compare"
                if earlier
                else "no earlier runs to compare"
            )
        if not kept:
            kept_basis = "no audited earlier runs to compare"
        expected_rate = float(np.mean(rates)) if rates else None
        expected_kept = float(np.mean(kept)) if kept else None
    return [
        DriftCheck(
            "escalation rate", escalation_rate, expected_rate, n_slm, settings.drift_band, basis
        ),
        DriftCheck(
            "agreement on audited kept documents",
            audit["agreement"],
            expected_kept,
            audit["documents"],
            settings.drift_band,
            kept_basis,
        ),
    ]


def escalation_counts(session: Session, run: Run) -> tuple[int, int]:
    """(escalated, SLM predictions) of one run: the worker's recorded decision, or for
    rows from before it was recorded, confidence under the run's threshold."""
    n, escalated = session.execute(
        select(
            func.count(),
            func.sum(
                case(
                    (Prediction.escalated.is_(True), 1),
                    (Prediction.escalated.is_(None) & (Prediction.confidence < run.threshold), 1),
                    else_=0,
                )
            ),
        ).where(Prediction.run_id == run.id, Prediction.stage == Stage.SLM)
    ).one()
    return int(escalated or 0), int(n or 0)


def run_report_basics(session: Session, run: Run) -> tuple[float | None, int, float | None]:
    """(escalation rate, SLM predictions, audited agreement) of one run."""
    escalated, n = escalation_counts(session, run)
    audited = agreement(session, run.id, Stage.AUDIT)
    audited_ok = audited["agreement"] if audited["documents"] >= MIN_DOCUMENTS else None
    return (escalated / n if n else None), n, audited_ok
