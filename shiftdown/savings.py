"""What the cascade saves against sending every document to the frontier: so far, and
projected once the documents still waiting for the frontier (parked, or queued behind
a budget cap) are paid for; and the documents it takes to pay back the switch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shiftdown.costs import cost_usd
from shiftdown.errors import ConfigError
from shiftdown.prompts import estimate_cached_tokens, estimate_tokens
from shiftdown.schema import (
    DocState,
    Document,
    FrontierCall,
    ModelVersion,
    Run,
    TeacherExample,
)
from shiftdown.settings import Settings
from shiftdown.taxonomy import Taxonomy

WAITING_FOR_FRONTIER = (DocState.ESCALATED, DocState.AWAITING_FRONTIER)


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Counterfactual:
    """What the run would have cost at the frontier, and the saving on the documents
    that left the SLM queue so far (``handled_documents``)."""

    all_frontier_usd: float | None
    all_frontier_usd_per_1k_docs: float | None
    handled_documents: int
    so_far_usd: float | None
    saving_pct: float | None
    basis: str


@dataclass(frozen=True)
class Projection:
    """The run's spend and saving once the documents still owed a frontier answer are
    paid for (``projected_usd`` None: no price to project with, ``basis`` says why)."""

    waiting_documents: int
    queued_documents: int
    expected_escalations: float
    usd_per_escalation: float | None
    basis: str
    projected_usd: float | None = None
    saving_pct: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (without a projection when there is no price)."""
        data = asdict(self)
        if self.projected_usd is None:
            del data["projected_usd"], data["saving_pct"]
        return data


@dataclass(frozen=True)
class BreakEven:
    """The switch's one-off cost and the documents that pay it back."""

    teacher_usd: float
    finetune_seconds: float
    finetune_usd: float
    one_off_usd: float
    saving_per_1k_docs: float | None
    break_even_documents: int | None


def frontier_usd_per_document(
    session: Session, task_name: str, taxonomy: Taxonomy, mean_chars: float, settings: Settings
) -> tuple[float, str]:
    """What the frontier costs per escalated document of this task, and on what basis:
    the recorded calls (every billed attempt, retries included) when there are any, else
    the price table applied to an estimate from text length."""
    spent, documents = session.execute(
        select(func.sum(FrontierCall.cost_usd), func.count(func.distinct(FrontierCall.document_id)))
        .join(Run, Run.id == FrontierCall.run_id)
        .where(Run.task_name == task_name, FrontierCall.document_id.is_not(None))
    ).one()
    if documents and spent is not None:
        return float(spent) / documents, f"recorded calls on {documents} documents"
    price_model = settings.frontier_price_model or settings.frontier_model
    prompt, completion = estimate_tokens(taxonomy, mean_chars)
    usd = cost_usd(price_model, round(prompt), round(completion), settings.price_table())
    if usd is None:
        raise ConfigError(f"no price for {price_model!r}: add it to SHIFTDOWN_PRICES")
    return usd, f"{price_model} list price, tokens estimated from text length"


def all_frontier_usd_per_document(
    session: Session, run: Run, taxonomy: Taxonomy, settings: Settings
) -> tuple[float | None, str]:
    """What one document of this run would cost at the frontier, at list price: the mean
    tokens of the run's successful whole-taxonomy calls, else of the task's (a run whose
    escalations are parked has none of its own), else tokens estimated from text length.

    Narrowed calls (a few candidate labels) are left out: all-frontier means the whole
    taxonomy every time. Cached prompt tokens count as the recorded calls had them (the
    same provider caches the same fixed prefix); an estimate caches the fixed prefix as
    a provider does, from 1,024 tokens up.
    """
    mean_prompt = mean_completion = mean_cached = 0.0
    basis = ""
    for scope, where in (
        ("", FrontierCall.run_id == run.id),
        (f" of task {run.task_name}", Run.task_name == run.task_name),
    ):
        n_ok, prompt, completion, cached = session.execute(
            select(
                func.count(),
                func.avg(FrontierCall.prompt_tokens),
                func.avg(FrontierCall.completion_tokens),
                func.avg(FrontierCall.cached_tokens),
            )
            .join(Run, Run.id == FrontierCall.run_id)
            .where(where, FrontierCall.status == "ok", FrontierCall.offered.is_(None))
        ).one()
        if n_ok:
            basis = f"mean tokens of {n_ok} recorded whole-taxonomy frontier calls{scope}"
            mean_prompt, mean_completion = float(prompt or 0), float(completion or 0)
            mean_cached = float(cached or 0)
            break
    if not basis:
        mean_chars = session.scalar(
            select(func.avg(func.length(Document.text))).where(Document.run_id == run.id)
        )
        mean_prompt, mean_completion = estimate_tokens(taxonomy, float(mean_chars or 0))
        mean_cached = estimate_cached_tokens(taxonomy)
        basis = "estimated from text length (no whole-taxonomy frontier call recorded)"
    price_model = settings.frontier_price_model or settings.frontier_model
    per_doc = cost_usd(
        price_model,
        round(mean_prompt),
        round(mean_completion),
        settings.price_table(),
        round(mean_cached),
    )
    return per_doc, basis


def counterfactual(
    session: Session,
    run: Run,
    taxonomy: Taxonomy,
    states: dict[str, int],
    spent: float,
    settings: Settings,
) -> Counterfactual:
    """The all-frontier cost of the run, and of the documents that left the SLM queue so
    far, with the saving the cascade made on those."""
    per_doc, basis = all_frontier_usd_per_document(session, run, taxonomy, settings)
    n_docs = sum(states.values())
    handled = n_docs - states.get(DocState.QUEUED, 0)
    so_far = per_doc * handled if per_doc is not None else None
    return Counterfactual(
        all_frontier_usd=_r(per_doc * n_docs, 6) if per_doc is not None else None,
        all_frontier_usd_per_1k_docs=_r(per_doc * 1000, 6) if per_doc is not None else None,
        handled_documents=handled,
        so_far_usd=_r(so_far, 6),
        saving_pct=round(100 * (1 - spent / so_far), 2) if so_far else None,
        basis=basis,
    )


def projection(
    session: Session,
    run: Run,
    taxonomy: Taxonomy,
    states: dict[str, int],
    spent: float,
    escalation_rate: float | None,
    all_frontier_usd: float | None,
    settings: Settings,
) -> Projection | None:
    """The run's spend and saving once every document still owed a frontier answer is
    paid for, at the measured (else estimated) cost per escalation; None when nothing
    waits. Documents still queued for the SLM count at the run's escalation rate."""
    waiting = sum(states.get(s, 0) for s in WAITING_FOR_FRONTIER)
    queued = states.get(DocState.QUEUED, 0)
    share = 1.0 if run.slm_bypass else (escalation_rate or 0.0)
    expected = waiting + queued * share
    if not expected:
        return None
    mean_chars = session.scalar(
        select(func.avg(func.length(Document.text))).where(
            Document.run_id == run.id, Document.state.in_(WAITING_FOR_FRONTIER)
        )
    ) or session.scalar(
        select(func.avg(func.length(Document.text))).where(Document.run_id == run.id)
    )
    owed = (waiting, queued, round(expected, 2))
    try:
        usd, basis = frontier_usd_per_document(
            session, run.task_name, taxonomy, float(mean_chars or 0), settings
        )
    except ConfigError as e:
        return Projection(*owed, usd_per_escalation=None, basis=str(e))
    projected = spent + expected * usd
    return Projection(
        *owed,
        usd_per_escalation=round(usd, 8),
        basis=basis,
        projected_usd=round(projected, 6),
        saving_pct=round(100 * (1 - projected / all_frontier_usd), 2) if all_frontier_usd else None,
    )


def break_even(
    session: Session,
    task_name: str,
    version: ModelVersion | None,
    usd_per_doc: float | None,
    all_frontier_usd_per_doc: float | None,
    settings: Settings,
) -> BreakEven:
    """The switch's one-off cost (teacher labels, fine-tuning compute) and how many
    documents at this run's measured cost per document pay it back."""
    teacher_usd = session.scalar(
        select(func.coalesce(func.sum(FrontierCall.cost_usd), 0.0))
        .join(TeacherExample, TeacherExample.frontier_call_id == FrontierCall.id)
        .where(TeacherExample.task_name == task_name, TeacherExample.source == "frontier")
    )
    seconds = (version.read_manifest().train_seconds or 0.0) if version else 0.0
    finetune_usd = seconds / 3600.0 * settings.finetune_usd_per_hour
    one_off = float(teacher_usd or 0.0) + finetune_usd
    saving = (
        all_frontier_usd_per_doc - usd_per_doc
        if all_frontier_usd_per_doc is not None and usd_per_doc is not None
        else None
    )
    return BreakEven(
        teacher_usd=round(float(teacher_usd or 0.0), 6),
        finetune_seconds=seconds,
        finetune_usd=round(finetune_usd, 6),
        one_off_usd=round(one_off, 6),
        saving_per_1k_docs=round(1000 * saving, 6) if saving is not None else None,
        break_even_documents=(
            round(one_off / saving) if saving and saving > 0 else (0 if one_off == 0 else None)
        ),
    )
