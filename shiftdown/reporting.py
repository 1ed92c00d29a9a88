"""A run's report: volume, escalation, throughput, latency, frontier spend, and what
sending every document to the frontier model would have cost instead.

Every figure comes from rows in the store: recorded latencies, recorded tokens and the
price table. Nothing is taken from the Celery backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from shiftdown.drift import MIN_DOCUMENTS, DriftCheck
from shiftdown.errors import ConfigError
from shiftdown.savings import (
    BreakEven,
    Counterfactual,
    Projection,
    break_even,
    counterfactual,
    projection,
)
from shiftdown.schema import (
    DocState,
    Document,
    EscalationReason,
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


@dataclass(frozen=True)
class Latency:
    """Nearest-rank latency percentiles of one stage's predictions."""

    p50_ms: float | None
    p95_ms: float | None
    n: int


@dataclass(frozen=True)
class Agreement:
    """How often the SLM's label matched the frontier's, on how many documents."""

    documents: int
    agreement: float | None


@dataclass(frozen=True)
class FrontierSpend:
    """The run's frontier calls, their tokens and dollars."""

    calls: int
    unpriced_calls: int
    prompt_tokens: int
    completion_tokens: int
    usd: float
    price_model: str


@dataclass(frozen=True)
class RunReport:
    """Every figure of one run's report."""

    run_id: int
    task: str
    model: str | None
    threshold: float
    source: str
    # Still taking documents (a stream, a follower, a submission in progress): every
    # figure is so far.
    open: bool
    documents: int
    rejected: int
    states: dict[str, int]
    final: int
    final_by_stage: dict[str, int]
    escalated: int
    escalation_rate: float | None
    # Open set: documents that ended as none of the labels, and their share of those
    # with a final outcome (None on a closed-set task).
    none: int | None
    none_rate: float | None
    # Documents the SLM found unlike its training set (models.familiarity), and those of
    # them escalated only for that (None: the model scores no unfamiliarity).
    unfamiliar: int | None
    unfamiliar_escalated: int | None
    slm_bypass: str | None
    parked: dict[str, int]
    # "audited": the sample of kept documents; "escalated": the frontier's answers.
    agreement: dict[str, Agreement]
    drift: list[DriftCheck]
    elapsed_s: float | None
    docs_per_s: float | None
    latency: dict[str, Latency]
    frontier: FrontierSpend
    usd_per_1k_docs: float | None
    counterfactual: Counterfactual
    projection: Projection | None
    break_even: BreakEven

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``report --format json``)."""
        data = asdict(self)
        data["drift"] = [check.as_dict() for check in self.drift]
        data["projection"] = self.projection.as_dict() if self.projection else None
        return data


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


def latency_percentiles(session: Session, run_id: int) -> dict[str, Latency]:
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
    figures: dict[str, Latency] = {
        stage: Latency(None, None, 0) for stage in (Stage.SLM, Stage.FRONTIER)
    }
    for stage, n, p50, p95 in session.execute(
        select(
            ranked.c.stage,
            ranked.c.n,
            func.min(case((ranked.c.rn >= 0.5 * ranked.c.n, ranked.c.latency_ms))),
            func.min(case((ranked.c.rn >= 0.95 * ranked.c.n, ranked.c.latency_ms))),
        ).group_by(ranked.c.stage, ranked.c.n)
    ):
        figures[stage] = Latency(round(float(p50), 2), round(float(p95), 2), n)
    return figures


def run_report(session: Session, run_id: int, settings: Settings) -> RunReport:
    """Every figure of the report for one run."""
    run = session.get(Run, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id}")
    task = session.get_one(Task, run.task_name)
    version = session.get(ModelVersion, run.model_version_id)
    taxonomy = task.read_taxonomy()

    states = documents_by_state(session, run_id)
    n_docs = sum(states.values())
    final_by_stage = {
        str(stage): int(n)
        for stage, n in session.execute(
            select(Document.final_stage, func.count())
            .where(Document.run_id == run_id, Document.final_stage.is_not(None))
            .group_by(Document.final_stage)
        )
    }
    n_final = sum(final_by_stage.values())
    escalated, n_slm = escalation_counts(session, run)
    escalation_rate = escalated / n_slm if n_slm else None
    audit = agreement(session, run_id, Stage.AUDIT)
    n_none = none_count(session, run_id) if taxonomy.open_set else None
    none_rate = n_none / n_final if n_none is not None and n_final else None
    unfamiliar, unfamiliar_escalated, n_scored = unfamiliar_counts(session, run_id)

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
    per_doc = cf.all_frontier_usd_per_1k_docs
    ahead = projection(
        session, run, taxonomy, states, spent, escalation_rate, cf.all_frontier_usd, settings
    )
    # Break-even at what the run will have cost once its waiting documents are paid for.
    final_spend = ahead.projected_usd if ahead and ahead.projected_usd is not None else spent
    return RunReport(
        run_id=run.id,
        task=run.task_name,
        model=f"v{version.version}" if version else None,
        threshold=run.threshold,
        source=run.source,
        open=run.submitted_at is None,
        documents=n_docs,
        rejected=int(session.scalar(select(func.count()).where(InputError.run_id == run_id)) or 0),
        states=states,
        final=n_final,
        final_by_stage=final_by_stage,
        escalated=escalated,
        escalation_rate=round(escalation_rate, 4) if escalation_rate is not None else None,
        none=n_none,
        none_rate=round(none_rate, 4) if none_rate is not None else None,
        unfamiliar=unfamiliar if n_scored else None,
        unfamiliar_escalated=unfamiliar_escalated if n_scored else None,
        slm_bypass=run.slm_bypass,
        parked=parked_reasons(session, run_id),
        agreement={"audited": audit, "escalated": agreement(session, run_id, Stage.FRONTIER)},
        drift=drift_checks(session, run, version, escalation_rate, n_slm, audit, settings)
        + none_drift(session, run, version, none_rate, n_final, settings)
        + unfamiliar_drift(version, unfamiliar, n_scored, settings),
        elapsed_s=round(elapsed, 3) if elapsed is not None else None,
        docs_per_s=round(n_final / elapsed, 2) if elapsed else None,
        latency=latency_percentiles(session, run_id),
        frontier=FrontierSpend(
            calls=n_calls,
            unpriced_calls=n_calls - n_priced,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            usd=round(spent, 6),
            price_model=settings.frontier_price_model or settings.frontier_model,
        ),
        usd_per_1k_docs=round(spent / n_docs * 1000, 6) if n_docs else None,
        counterfactual=cf,
        projection=ahead,
        break_even=break_even(
            session,
            run.task_name,
            version,
            final_spend / n_docs if n_docs else None,
            per_doc / 1000 if per_doc is not None else None,
            settings,
        ),
    )


def parked_reasons(session: Session, run_id: int) -> dict[str, int]:
    """Documents waiting for the frontier, by why they wait (a budget cap, or none set)."""
    rows = session.execute(
        select(Document.error, func.count())
        .where(Document.run_id == run_id, Document.state == DocState.AWAITING_FRONTIER)
        .group_by(Document.error)
    ).all()
    return {reason or "no frontier configured": n for reason, n in rows}


def agreement_by_run(session: Session, run_ids: Sequence[int], stage: str) -> dict[int, Agreement]:
    """How often the SLM's label matches the frontier's at ``stage``, per run:
    ``frontier`` for escalated documents, ``audit`` for the sample of kept ones. Two none
    outcomes (no label) agree."""
    slm, other = aliased(Prediction), aliased(Prediction)
    same = case((slm.label.is_not_distinct_from(other.label), 1), else_=0)
    rows = session.execute(
        select(slm.run_id, func.count(), func.sum(same))
        .select_from(slm)
        .join(other, (other.document_id == slm.document_id) & (other.stage == stage))
        .where(slm.run_id.in_(run_ids), slm.stage == Stage.SLM)
        .group_by(slm.run_id)
    ).all()
    found = {
        run_id: Agreement(int(seen), round(int(agreed or 0) / seen, 4) if seen else None)
        for run_id, seen, agreed in rows
    }
    return {run_id: found.get(run_id, Agreement(0, None)) for run_id in run_ids}


def agreement(session: Session, run_id: int, stage: str) -> Agreement:
    """How often the SLM's label matches the frontier's at ``stage`` in this run."""
    return agreement_by_run(session, [run_id], stage)[run_id]


def _earlier_figures(session: Session, run: Run) -> list[tuple[float | None, int, float | None]]:
    """(escalation rate, SLM predictions, audited agreement) of each earlier run of the
    same model: three queries however many runs there were."""
    ids = list(
        session.scalars(
            select(Run.id).where(
                Run.task_name == run.task_name,
                Run.model_version_id == run.model_version_id,
                Run.id < run.id,
            )
        )
    )
    if not ids:
        return []
    counts = escalation_counts_by_run(session, ids)
    audits = agreement_by_run(session, ids, Stage.AUDIT)
    figures = []
    for run_id in ids:
        escalated, n = counts[run_id]
        audited = audits[run_id]
        audited_ok = audited.agreement if audited.documents >= MIN_DOCUMENTS else None
        figures.append((escalated / n if n else None, n, audited_ok))
    return figures


def drift_checks(
    session: Session,
    run: Run,
    version: ModelVersion | None,
    escalation_rate: float | None,
    n_slm: int,
    audit: Agreement,
    settings: Settings,
) -> list[DriftCheck]:
    """The run's escalation rate and audited agreement against their references: the
    version's held-out figures when a policy is stored, else its earlier runs."""
    fitted = version.read_manifest().fitted if version else {}
    if fitted:
        basis = kept_basis = "held-out data of the policy"
        expected_rate, expected_kept = fitted.get("escalation_rate"), fitted.get("kept_accuracy")
    else:
        earlier = _earlier_figures(session, run)
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
            audit.agreement,
            expected_kept,
            audit.documents,
            settings.drift_band,
            kept_basis,
        ),
    ]


def none_count(session: Session, run_id: int) -> int:
    """Documents of the run whose final outcome is none (open set)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Document)
            .join(
                Prediction,
                (Prediction.document_id == Document.id)
                & (Prediction.stage == Document.final_stage),
            )
            .where(Document.run_id == run_id, Prediction.label.is_(None))
        )
        or 0
    )


def unfamiliar_counts(session: Session, run_id: int) -> tuple[int, int, int]:
    """(unfamiliar, escalated only for being unfamiliar, SLM predictions scored) of a run."""
    n_unfamiliar, n_added, n_scored = session.execute(
        select(
            func.sum(case((Prediction.unfamiliar.is_(True), 1), else_=0)),
            func.sum(
                case((Prediction.escalation_reason == EscalationReason.UNFAMILIAR, 1), else_=0)
            ),
            func.count(Prediction.unfamiliarity),
        ).where(Prediction.run_id == run_id, Prediction.stage == Stage.SLM)
    ).one()
    return int(n_unfamiliar or 0), int(n_added or 0), int(n_scored or 0)


def unfamiliar_drift(
    version: ModelVersion | None, unfamiliar: int, n_scored: int, settings: Settings
) -> list[DriftCheck]:
    """The share of documents unlike the model's training set, against the share of
    known held-out documents its threshold flags: well above it, the stream holds
    topics (or languages, or formats) the model was never taught."""
    if not n_scored:
        return []
    ref = version.read_manifest().familiarity if version else None
    expected = ref.false_flag_rate if ref else None
    basis = "the familiarity threshold's false-flag rate on held-out documents"
    return [
        DriftCheck(
            "unfamiliar rate", unfamiliar / n_scored, expected, n_scored, settings.drift_band, basis
        )
    ]


def none_drift(
    session: Session,
    run: Run,
    version: ModelVersion | None,
    none_rate: float | None,
    n_final: int,
    settings: Settings,
) -> list[DriftCheck]:
    """Open set: the run's none rate against the policy's held-out share of none
    documents, else the model's earlier runs (a new topic in the stream shows here)."""
    if none_rate is None:
        return []
    expected = (version.read_manifest().fitted if version else {}).get("none_rate")
    basis = "held-out data of the policy"
    if expected is None:
        earlier = session.execute(
            select(Run.id)
            .where(
                Run.task_name == run.task_name,
                Run.model_version_id == run.model_version_id,
                Run.id < run.id,
            )
            .order_by(Run.id.desc())
            .limit(20)
        ).scalars()
        rates = []
        for run_id in earlier:
            final = int(
                session.scalar(
                    select(func.count()).where(
                        Document.run_id == run_id, Document.final_stage.is_not(None)
                    )
                )
                or 0
            )
            if final >= MIN_DOCUMENTS:
                rates.append(none_count(session, run_id) / final)
        expected = float(np.mean(rates)) if rates else None
        basis = (
            f"{len(rates)} earlier run(s) of this model"
            if rates
            else f"no earlier run of {MIN_DOCUMENTS}+ documents to compare"
        )
    return [DriftCheck("none rate", none_rate, expected, n_final, settings.drift_band, basis)]


def escalation_counts_by_run(
    session: Session, run_ids: Sequence[int]
) -> dict[int, tuple[int, int]]:
    """(escalated, SLM predictions) per run: the worker's recorded decision, or for rows
    from before it was recorded, confidence under the run's threshold."""
    rows = session.execute(
        select(
            Prediction.run_id,
            func.count(),
            func.sum(
                case(
                    (Prediction.escalated.is_(True), 1),
                    (Prediction.escalated.is_(None) & (Prediction.confidence < Run.threshold), 1),
                    else_=0,
                )
            ),
        )
        .join(Run, Run.id == Prediction.run_id)
        .where(Prediction.run_id.in_(run_ids), Prediction.stage == Stage.SLM)
        .group_by(Prediction.run_id)
    ).all()
    found = {run_id: (int(escalated or 0), int(n)) for run_id, n, escalated in rows}
    return {run_id: found.get(run_id, (0, 0)) for run_id in run_ids}


def escalation_counts(session: Session, run: Run) -> tuple[int, int]:
    """(escalated, SLM predictions) of one run."""
    return escalation_counts_by_run(session, [run.id])[run.id]
