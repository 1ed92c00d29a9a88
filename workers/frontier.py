"""The frontier stage: label an escalated document with the frontier model, record
every attempt with its tokens and dollars, and retry only what a retry can fix.

With no frontier configured, escalated documents are parked as ``awaiting_frontier``;
``shiftdown escalate`` sends them once one is. So are documents the frontier could not be
reached for (an outage, rate limits past the retries, or the circuit breaker open,
``workers.frontier_breaker``): they wait instead of failing, and each worker's recovery
pass (``workers.frontier_recovery``) sends them again once the frontier answers. Only a
request the frontier refuses (a 4xx other than 408/409/429), or answers that stay
malformed or outside the taxonomy through every retry, end a document
``frontier_failed``.
"""

from __future__ import annotations

import itertools
import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.candidates import top_candidates
from models.policy import offered_k, stored_policy
from models.registry import task_taxonomy
from shiftdown.db import session_scope
from shiftdown.prompts import NONE_OF_THESE
from shiftdown.schema import (
    DocState,
    Document,
    FrontierCall,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
    as_utc,
    state_in,
    utcnow,
)
from shiftdown.settings import get_settings
from shiftdown.taxonomy import NONE_LABEL, Taxonomy
from workers import results_stream
from workers.app import TASK_FRONTIER, app
from workers.frontier_breaker import PROBE, UNAVAILABLE, CircuitBreaker
from workers.frontier_client import OK, RETRYABLE, FrontierClient, FrontierResult
from workers.store import (
    PredictionRow,
    insert_predictions,
    insert_teacher_examples,
    move_documents,
    teacher_row,
)

log = logging.getLogger(__name__)

WAITING = (DocState.ESCALATED, DocState.AWAITING_FRONTIER)

_client: FrontierClient | None = None
_breaker: CircuitBreaker | None = None


def get_client() -> FrontierClient:
    """This process's frontier client (it remembers what the server accepts)."""
    global _client
    if _client is None:
        _client = FrontierClient(get_settings())
    return _client


def get_breaker() -> CircuitBreaker:
    """This process's circuit breaker for the frontier."""
    global _breaker
    if _breaker is None:
        s = get_settings()
        _breaker = CircuitBreaker(s.frontier_breaker_failures, s.frontier_breaker_cooldown_s)
    return _breaker


def reset_client() -> None:
    """Forget the client and the breaker (after settings change)."""
    global _client, _breaker
    _client = None
    _breaker = None


def backoff_s(retry: int) -> float:
    """Exponential backoff before retry ``retry`` (1, 2, …): base, 2 x base, … at most 5 min."""
    return float(min(300.0, get_settings().frontier_retry_base_s * 2 ** (retry - 1)))


def record_call(
    session: Session,
    result: FrontierResult,
    attempt: int = 1,
    document_id: int | None = None,
    run_id: int | None = None,
    batch_id: int | None = None,
) -> FrontierCall:
    """Add one attempt, with its tokens and dollars, to the session."""
    call = FrontierCall(
        document_id=document_id,
        run_id=run_id,
        batch_id=batch_id,
        attempt=attempt,
        model=result.model,
        status=result.status,
        http_status=result.http_status,
        error=result.error,
        response_format=result.response_format,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
        offered=result.offered,
        cost_usd=result.cost_usd,
        latency_ms=result.latency_ms,
    )
    session.add(call)
    return call


def _record(
    document_id: int,
    run_id: int,
    result: FrontierResult,
    final: bool,
    audit: bool,
    alone: bool = False,
) -> int:
    with session_scope() as session:
        attempt = record_outcome(session, document_id, run_id, result, final, audit, alone=alone)
        if not result.declined:  # after "none of these" the whole taxonomy is asked next,
            release_lease(session, document_id)  # under the same lease
    if not audit and (result.status == OK or final):
        results_stream.append([document_id])
    return attempt


def park(session: Session, document_id: int, reason: str | None) -> None:
    """The document waits for the frontier (``awaiting_frontier``), with why: none
    configured (no reason), a budget cap, or the frontier unavailable."""
    move_documents(session, [document_id], WAITING, state=DocState.AWAITING_FRONTIER, error=reason)


def attempts_made(session: Session, document_id: int) -> int:
    """Frontier calls recorded for the document so far."""
    return int(
        session.scalar(select(func.count()).where(FrontierCall.document_id == document_id)) or 0
    )


# The error of a document the frontier kept failing while it answered others.
FAILED_ALONE = "frontier unavailable for this document alone"


def failures_alone(session: Session, document_id: int, window: int = 64) -> int:
    """The document's failed calls (of its last ``window``) after each of which some
    other document had been answered since its call before: failures of this request,
    not of the frontier. Its first call counts for nothing (no call before it)."""
    calls = session.execute(
        select(FrontierCall.id, FrontierCall.status)
        .where(FrontierCall.document_id == document_id)
        .order_by(FrontierCall.id.desc())
        .limit(window)
    ).all()[::-1]
    n = 0
    for (before, _), (call_id, status) in itertools.pairwise(calls):
        if status == OK:
            continue
        # The primary key orders the calls as they were recorded: an id range reads
        # only the calls in between (their first answer ends the scan).
        answered = session.scalar(
            select(FrontierCall.id)
            .where(
                FrontierCall.id > before,
                FrontierCall.id < call_id,
                FrontierCall.status == OK,
                FrontierCall.document_id != document_id,
            )
            .limit(1)
        )
        n += answered is not None
    return n


# What the canary call asks: a one-word document, the cheapest request that shows the
# frontier answering.
CANARY_TEXT = "ping"


def _answers_others(
    document_id: int,
    run_id: int,
    taxonomy: Taxonomy,
    result: FrontierResult,
    breaker: CircuitBreaker,
) -> bool:
    """Whether the frontier, which just failed this document's call as unavailable,
    answers other requests: asked only of a document that has failed its budget of
    calls (``SHIFTDOWN_FRONTIER_DOCUMENT_FAILURES``) without other documents' answers in
    between to say so (a quiet stream, or the last document of a run), by one canary
    call of a one-word document, recorded and billed to the run like every call."""
    if not result.unavailable or result.credentials:
        return False
    budget = get_settings().frontier_document_failures
    with session_scope() as session:
        if attempts_made(session, document_id) + 1 < budget:
            return False
        if failures_alone(session, document_id) + 1 >= budget:
            return False  # the record will say so from the calls alone
    if not _canary_answers(run_id, taxonomy, breaker):
        return False
    log.warning(
        "document %d: the frontier answers a canary but not its request: failing it", document_id
    )
    return True


def _canary_answers(run_id: int, taxonomy: Taxonomy, breaker: CircuitBreaker) -> bool:
    """One canary call (a one-word document, the whole taxonomy), recorded against the
    run without a document and counted by the breaker: whether the frontier answers."""
    canary = get_client().classify(CANARY_TEXT, taxonomy)
    # Counted before it is recorded: a store that fails now must not leave a probe
    # marked.
    if canary.unavailable:
        breaker.failed(canary.error)
    else:
        breaker.succeeded()
    with session_scope() as session:
        record_call(session, canary, attempt=0, run_id=run_id)
    return not canary.unavailable


def _failed_alone(session: Session, document_id: int) -> int:
    """The document's failures alone (``failures_alone``, this call's included) once
    they reach ``SHIFTDOWN_FRONTIER_DOCUMENT_FAILURES``, else 0."""
    session.flush()
    alone = failures_alone(session, document_id)
    return alone if alone >= get_settings().frontier_document_failures else 0


def record_outcome(
    session: Session,
    document_id: int,
    run_id: int,
    result: FrontierResult,
    final: bool,
    audit: bool = False,
    batch_id: int | None = None,
    alone: bool = False,
) -> int:
    """Record one call and what it settles, in ``session``: the call with its tokens and
    dollars; an answer's prediction, teacher example and final state; a document the
    frontier fails alone (``failures_alone``) failed at once, whatever its retries; or,
    when the attempt was the last (``final``), the failure, or the wait for the frontier.
    Returns the attempt number."""
    stage = Stage.AUDIT if audit else Stage.FRONTIER
    attempt = 1 + attempts_made(session, document_id)
    call = record_call(session, result, attempt, document_id, run_id, batch_id)
    if result.declined:
        return attempt
    if result.status == OK and result.label is not None:
        run = session.get_one(Run, run_id)
        # On an open-set task "none" is an outcome, recorded without a label; it is
        # still the teacher's answer, which the SLM learns as one. Only that answer needs
        # the task read (a closed task may have a label of the name).
        is_none = result.label == NONE_LABEL and bool(
            session.scalar(select(Task.open_set).where(Task.name == run.task_name))
        )
        row = PredictionRow(
            document_id=document_id,
            run_id=run_id,
            stage=stage,
            label=None if is_none else result.label,
            confidence=result.confidence,
            model=result.model,
            latency_ms=result.latency_ms,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.cost_usd,
        )
        insert_predictions(session, [row])
        # The learning loop: every frontier answer the cascade paid for is teacher data.
        session.flush()
        doc = session.get_one(Document, document_id)
        insert_teacher_examples(
            session,
            [teacher_row(run.task_name, doc.text, result.label, stage_source(stage), call.id)],
        )
        if not audit and move_documents(
            session,
            [document_id],
            WAITING,
            state=DocState.CLASSIFIED,
            final_stage=Stage.FRONTIER,
            error=None,
        ):
            results_stream.owe(session, [(document_id, run_id)])
    elif (
        not audit
        and result.unavailable
        and not result.credentials
        and (
            failures := attempts_made(session, document_id)
            if alone
            else _failed_alone(session, document_id)
        )
    ):
        # The frontier answers others but keeps failing this request: it is this
        # document's, and waiting (or retrying) would only send it again and again.
        if move_documents(
            session,
            [document_id],
            WAITING,
            state=DocState.FRONTIER_FAILED,
            error=f"{FAILED_ALONE} ({failures} calls): {result.error}"[:500],
        ):
            results_stream.owe(session, [(document_id, run_id)])
    elif final and not audit and result.unavailable:
        park(session, document_id, f"{UNAVAILABLE}: {result.error}"[:500])
    elif (
        final
        and not audit
        and move_documents(
            session,
            [document_id],
            WAITING,
            state=DocState.FRONTIER_FAILED,
            error=result.error,
        )
    ):
        results_stream.owe(session, [(document_id, run_id)])
    return attempt


# The lease outlives the longest call by 30 s (lease_s): while it holds, no other
# delivery calls the frontier for this document, so an answer already paid for can wait
# here for the store to come back instead of being bought again on redelivery.
RECORD_PATIENCE_S = 25.0


def _record_paid(
    document_id: int,
    run_id: int,
    result: FrontierResult,
    final: bool,
    audit: bool,
    alone: bool = False,
) -> int:
    deadline = time.monotonic() + RECORD_PATIENCE_S
    delay = 0.5
    while True:
        try:
            return _record(document_id, run_id, result, final, audit, alone)
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning(
                "recording the frontier answer for document %d failed (%s); trying again",
                document_id,
                type(exc).__name__,
            )
            time.sleep(delay)
            delay = min(2 * delay, 4.0)


def stage_source(stage: str) -> str:
    """The teacher-example source of a frontier answer given at ``stage``."""
    return "audit" if stage == Stage.AUDIT else "escalation"


def _pending(session: Session, document_id: int, audit: bool) -> Document | None:
    # What is still to do, re-read from the store: a redelivered task finds it done.
    doc = session.get(Document, document_id)
    if doc is None:
        return None
    if audit:
        if doc.state != DocState.CLASSIFIED or doc.final_stage != Stage.SLM:
            return None
    elif doc.state not in WAITING:
        return None
    done = session.scalar(
        select(Prediction.id).where(
            Prediction.document_id == document_id,
            Prediction.stage == (Stage.AUDIT if audit else Stage.FRONTIER),
        )
    )
    return doc if done is None else None


def candidates_for(
    session: Session, doc: Document, run: Run, taxonomy: Taxonomy
) -> list[str] | None:
    """The SLM's top labels this document's request offers, or None (the whole
    taxonomy): narrowing off, a taxonomy that has a label of the reserved name, or no
    stored distribution holding enough labels, or a narrowed answer already declined,
    or a document the SLM found unfamiliar, or (open set) none among the SLM's top
    outcomes: only the whole taxonomy offers it."""
    version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    policy = stored_policy(version.read_manifest()) if version else None
    k = offered_k(policy, get_settings().frontier_top_k)
    if not k or k >= len(taxonomy) or NONE_OF_THESE in taxonomy:
        return None
    declined_before = session.scalar(
        select(FrontierCall.id).where(
            FrontierCall.document_id == doc.id,
            FrontierCall.offered.is_not(None),
            FrontierCall.status == "ok",
        )
    )
    if declined_before is not None:
        return None  # a retry after "none of these": straight to the whole taxonomy
    slm = session.execute(
        select(Prediction.distribution, Prediction.unfamiliar).where(
            Prediction.document_id == doc.id, Prediction.stage == Stage.SLM
        )
    ).one_or_none()
    if slm is None or slm.unfamiliar:
        # Unlike anything the SLM was trained on: its top labels are the view in doubt,
        # and offering only them invites "none of these" and a second paid call.
        return None
    found = top_candidates(slm.distribution, k)
    if found is not None and taxonomy.open_set and NONE_LABEL in found:
        return None
    return found


def stored_candidates(session: Session, document_id: int, k: int) -> list[str] | None:
    """The ``k`` most probable labels of the document's stored SLM distribution (None
    when it holds fewer)."""
    distribution = session.scalar(
        select(Prediction.distribution).where(
            Prediction.document_id == document_id, Prediction.stage == Stage.SLM
        )
    )
    return top_candidates(distribution, k)


def over_budget(session: Session, run_id: int) -> str | None:
    """Why no more frontier calls may be made for this run now, or None.

    Checked before each call, so concurrent workers can overshoot a cap by at most the
    calls they have in flight.
    """
    s = get_settings()
    spent = func.coalesce(func.sum(FrontierCall.cost_usd), 0.0)
    if s.frontier_budget_usd_per_run is not None:
        run_spent = float(session.scalar(select(spent).where(FrontierCall.run_id == run_id)) or 0)
        if run_spent >= s.frontier_budget_usd_per_run:
            return (
                f"budget: run {run_id} spent ${run_spent:.4f} of its "
                f"${s.frontier_budget_usd_per_run:g} cap (SHIFTDOWN_FRONTIER_BUDGET_USD_PER_RUN)"
            )
    if s.frontier_budget_usd_per_hour is not None:
        since = utcnow() - timedelta(hours=1)
        hour_spent = float(
            session.scalar(select(spent).where(FrontierCall.created_at >= since)) or 0
        )
        if hour_spent >= s.frontier_budget_usd_per_hour:
            return (
                f"budget: ${hour_spent:.4f} spent in the last hour, cap "
                f"${s.frontier_budget_usd_per_hour:g} (SHIFTDOWN_FRONTIER_BUDGET_USD_PER_HOUR)"
            )
    return None


def lease_s() -> float:
    """How long one delivery may hold a document: its call with all client retries."""
    s = get_settings()
    return s.frontier_timeout_s * (s.frontier_client_retries + 1) + 30.0


class LeaseHeld(Exception):
    """Another delivery of this document's task is calling the frontier right now."""

    def __init__(self, document_id: int, seconds_left: float) -> None:
        super().__init__(f"document {document_id}: a frontier call is already in flight")
        self.seconds_left = seconds_left


def lease_left_s(session: Session, document_id: int) -> float:
    """Seconds until the document's current lease ends (0 when it has none)."""
    until = session.scalar(select(Document.frontier_lease_until).where(Document.id == document_id))
    if until is None:
        return 0.0
    return max(0.0, (as_utc(until) - utcnow()).total_seconds())


def take_lease(session: Session, document_id: int, audit: bool) -> bool:
    """Claim the document for one frontier call; False while another delivery holds it
    (or, for an escalation, once another delivery has labelled it)."""
    now = utcnow()
    # The state is part of the claim: a delivery that committed its label between our
    # read and this update leaves nothing to claim (Postgres re-checks the locked row).
    states = [DocState.CLASSIFIED] if audit else list(WAITING)
    result = session.execute(
        update(Document)
        .where(
            Document.id == document_id,
            state_in(states),
            or_(Document.frontier_lease_until.is_(None), Document.frontier_lease_until < now),
        )
        .values(frontier_lease_until=now + timedelta(seconds=lease_s()))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def release_lease(session: Session, document_id: int) -> None:
    """End this delivery's claim (in the transaction that records its call)."""
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(frontier_lease_until=None)
        .execution_options(synchronize_session=False)
    )


def process_document(
    document_id: int, retries_left: bool, audit: bool = False
) -> tuple[FrontierResult, bool] | None:
    """Label one escalated (or, with ``audit``, one kept) document: the attempt's result
    and whether it settled the document (an answer, a failure, or parked to wait for the
    frontier); None when there was nothing to do (or it was parked without a call)."""
    breaker = get_breaker()
    # Once the breaker has let this call through as its half-open probe, every way out
    # of here before the answer is counted hands the probe back: a store that fails
    # between the breaker and the call, a taxonomy that cannot be read, anything. A
    # probe left marked would park every later escalation of this process.
    probe = leased = False
    try:
        with session_scope() as session:
            prepared = _prepare(session, document_id, audit, breaker)
            if prepared is None:
                return None
            doc, probe = prepared
            if not take_lease(session, document_id, audit):
                raise LeaseHeld(document_id, lease_left_s(session, document_id))
            leased = True
            run = session.get_one(Run, doc.run_id)
            taxonomy = task_taxonomy(session.get_one(Task, run.task_name))
            # Audits ask the whole taxonomy: they measure the SLM, so they must not lean
            # on it.
            candidates = None if audit else candidates_for(session, doc, run, taxonomy)
            text, run_id = doc.text, doc.run_id
        if probe:
            # The half-open probe asks a canary, not this document: a document whose own
            # request fails (a poisoned one, parked among others) must not keep the
            # breaker open for every other one. Down still: the document waits.
            answered = _canary_answers(run_id, taxonomy, breaker)
            probe = False  # counted by the breaker either way
            if not answered:
                with session_scope() as session:
                    park(session, document_id, breaker.reason())
                    release_lease(session, document_id)
                return None
        result = get_client().classify(text, taxonomy, candidates)
        if result.declined:
            # "None of these": recorded like every call, then the whole taxonomy.
            _record_paid(document_id, run_id, result, False, audit)
            result = get_client().classify(text, taxonomy)
    except BaseException:
        if probe:
            breaker.released()
        if leased:
            _release_quietly(document_id)
        raise
    if result.unavailable:
        breaker.failed(result.error)
    else:
        breaker.succeeded()
    alone = not audit and _answers_others(document_id, run_id, taxonomy, result, breaker)
    # While the breaker is open a retry of an outage would only park the document: it
    # waits now; so does one the frontier refused the credentials of (no retry can fix
    # a key). A malformed answer keeps its retries: the frontier did answer.
    parked = result.unavailable and (breaker.state == "open" or result.credentials)
    final = result.status != RETRYABLE or not retries_left or parked or alone
    attempt = _record_paid(document_id, run_id, result, final, audit, alone)
    if result.status != OK:
        log.warning("frontier attempt %d for document %d: %s", attempt, document_id, result.error)
    return result, final


def _prepare(
    session: Session, document_id: int, audit: bool, breaker: CircuitBreaker
) -> tuple[Document, bool] | None:
    """The document to call the frontier for, once the budget and the breaker allow a
    call, and whether the call is the breaker's probe; None (parked, or nothing to do)
    otherwise."""
    doc = _pending(session, document_id, audit)
    if doc is None:
        return None
    capped = over_budget(session, doc.run_id)
    if not get_settings().frontier_configured or capped:
        if not audit:
            park(session, document_id, capped)
        return None
    how = breaker.acquire()
    if how is None:
        # The frontier is down: no call, the document waits (an audit is skipped).
        if not audit:
            park(session, document_id, breaker.reason())
        return None
    return doc, how == PROBE


def _release_quietly(document_id: int) -> None:
    # The error on its way out is the one that matters; a lease that cannot be ended
    # now (the store away) runs out by itself after lease_s().
    try:
        with session_scope() as session:
            release_lease(session, document_id)
    except Exception as exc:
        log.warning("document %d: its frontier lease could not be released (%s)", document_id, exc)


@app.task(
    name=TASK_FRONTIER,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=20,
)
def classify_with_frontier(self: Any, document_id: int, audit: bool = False) -> str:
    """Celery entry point of the frontier stage; takes a document id only (``audit``:
    a kept document sampled to measure the SLM's accuracy, its label stays the SLM's).
    In batch mode an escalation waits, escalated, for the next batch (workers/batch.py)."""
    s = get_settings()
    if s.frontier_mode == "batch" and not audit:
        return "batched"
    retry = self.request.retries
    while True:
        try:
            outcome = process_document(document_id, retry < s.frontier_task_retries, audit)
        except LeaseHeld as held:
            if self.request.is_eager:
                log.warning("%s (another process holds it)", held)
                return "leased"
            # A second delivery (the first outlived the visibility timeout, or died): look
            # again once the lease has run out. By then the first has recorded its answer,
            # and this is a no-op; or it died, and this delivery makes the call.
            log.info("%s; checking again in %.0f s", held, held.seconds_left + 1)
            classify_with_frontier.apply_async(
                args=[document_id, audit], countdown=held.seconds_left + 1, queue=s.frontier_queue
            )
            return "leased"
        if outcome is None:
            return "noop"
        result, final = outcome
        if final:
            return "parked" if result.status == RETRYABLE and result.unavailable else result.status
        countdown = result.retry_after_s or backoff_s(retry + 1)
        if not self.request.is_eager:
            raise self.retry(countdown=countdown, max_retries=s.frontier_task_retries)
        # In-process there is no broker to hold a countdown: wait here, same bounds.
        time.sleep(countdown)
        retry += 1
