"""The SLM stage: classify a batch of documents with the task's llama.cpp model, keep
the confident ones, and escalate the rest to the frontier stage.

Models are loaded once per worker process (in ``worker_process_init`` for the default
task, lazily for others) and a bounded number stay resident. Each is served through a
``DecodeLoop``: with Celery's threads pool (``-P threads -c N``, the GPU worker), the
documents of every task in flight share decodes, and a task's store writes overlap the
next decode.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from models.classifier import Classification, Classifier, RuntimeOptions
from models.decode_loop import DecodeLoop
from models.policy import answers, offered_k, stored_policy
from models.registry import model_name, spec_for, task_taxonomy
from shiftdown.db import dispose_engines, session_scope
from shiftdown.errors import FatalError, RetryableError
from shiftdown.schema import (
    DocState,
    Document,
    EscalationReason,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
    state_in,
)
from shiftdown.settings import get_settings
from shiftdown.taxonomy import NONE_LABEL, Taxonomy
from workers import results_stream
from workers.app import TASK_FRONTIER, TASK_SLM, app, dispatch
from workers.store import PredictionRow, SlmOutcome, store_slm_outcomes

log = logging.getLogger(__name__)

_resident: OrderedDict[tuple[int, str], DecodeLoop] = OrderedDict()
# Worker threads (the threads pool) ask for a model at once: it is loaded once.
_loading = threading.Lock()


def get_classifier(version: ModelVersion, taxonomy: Taxonomy) -> DecodeLoop:
    """The loaded model for this version and label list, loading it (LRU) if needed."""
    key = (version.id, taxonomy.hash)
    evicted: list[DecodeLoop] = []
    with _loading:
        loop = _resident.get(key)
        if loop is not None:
            _resident.move_to_end(key)
            return loop
        s = get_settings()
        while len(_resident) >= s.max_resident_models:
            evicted.append(_resident.popitem(last=False)[1])
        loop = DecodeLoop(Classifier(spec_for(version, taxonomy), RuntimeOptions.from_settings(s)))
        _resident[key] = loop
    # Outside the lock: an evicted model finishes what is queued on it first.
    for old in evicted:
        old.close()
    log.info("loaded %s for %d labels", model_name(version), len(taxonomy))
    return loop


def unload_models() -> None:
    """Unload every resident model (tests switching settings, a worker shutting down)."""
    with _loading:
        while _resident:
            _resident.popitem()[1].close()


@worker_process_init.connect
def _load_default_model(**_: Any) -> None:
    # Engines made before the fork share sockets with the parent: start clean.
    dispose_engines()
    s = get_settings()
    try:
        with session_scope() as session:
            task = session.get(Task, s.task)
            if task is None or task.model_version_id is None:
                return
            version = session.get(ModelVersion, task.model_version_id)
            if version is not None:
                get_classifier(version, task_taxonomy(task))
    except Exception:  # the first batch loads it lazily and reports the error properly
        log.exception("could not preload the model of task %r", s.task)


@dataclass
class _Work:
    doc_id: int
    text: str
    run: Run
    task: Task
    version: ModelVersion


def _load(ids: list[int]) -> list[_Work]:
    """The still-queued documents among ``ids`` with their run, task and model version:
    two queries, whatever the number of documents and runs."""
    with session_scope() as session:
        docs = session.execute(
            select(Document.id, Document.text, Document.run_id)
            .where(Document.id.in_(ids), state_in([DocState.QUEUED]))
            .order_by(Document.run_id, Document.id)
        ).all()
        if not docs:
            return []
        contexts = {
            run.id: (run, task, version)
            for run, task, version in session.execute(
                select(Run, Task, ModelVersion)
                .join(Task, Task.name == Run.task_name)
                .join(ModelVersion, ModelVersion.id == Run.model_version_id)
                .where(Run.id.in_({d.run_id for d in docs}))
            )
        }
        return [_Work(doc_id, text, *contexts[run_id]) for doc_id, text, run_id in docs]


def audited(doc_id: int, rate: float) -> bool:
    """Whether a kept document is in the audit sample: a fixed function of its id, so
    a redelivered batch samples the same documents."""
    return rate > 0 and (doc_id * 2654435761 % 2**32) / 2**32 < rate


def _classified(work: list[_Work]) -> list[tuple[_Work, Classification | str, Taxonomy]]:
    """Each document's classification, or why it has none, with its task's taxonomy.
    Documents of one model and taxonomy are decoded together; if that fails, one by
    one, so that a document llama.cpp cannot take is recorded as failed without taking
    its batch with it."""
    out: list[tuple[_Work, Classification | str, Taxonomy]] = []
    for _, group in groupby(work, key=lambda w: (w.version.id, w.task.name)):
        items = list(group)
        taxonomy = task_taxonomy(items[0].task)
        try:
            clf = get_classifier(items[0].version, taxonomy)
        except FatalError as exc:
            out.extend((item, str(exc), taxonomy) for item in items)
            continue
        try:
            results = clf.classify_many([i.text for i in items])
            out.extend((i, r, taxonomy) for i, r in zip(items, results, strict=True))
            continue
        except RetryableError:
            raise  # the task tries again (a model unloaded while it waited, say)
        except Exception:
            log.exception("a batch of %d failed; classifying them one by one", len(items))
        for item in items:
            outcome: Classification | str
            try:
                outcome = clf.classify(item.text)
            except RetryableError:
                raise
            except FatalError as exc:
                outcome = str(exc)
            except Exception as exc:  # llama.cpp failed on this document: record, go on
                log.exception("document %d could not be classified", item.doc_id)
                outcome = f"{type(exc).__name__}: {exc}"[:500]
            out.append((item, outcome, taxonomy))
    return out


def _outcomes(work: list[_Work]) -> list[SlmOutcome]:
    """Each document's classification turned into a decision under its run's policy."""
    s = get_settings()
    parked = DocState.ESCALATED if s.frontier_configured else DocState.AWAITING_FRONTIER
    thresholds: dict[int, dict[str, float]] = {}
    margins: dict[int, float] = {}
    offered: dict[int, int] = {}
    names: dict[int, str] = {}
    outcomes: list[SlmOutcome] = []
    for item, outcome, taxonomy in _classified(work):
        if isinstance(outcome, str):
            outcomes.append(SlmOutcome(item.doc_id, DocState.FAILED, error=outcome))
            continue
        version = item.version
        if version.id not in thresholds:
            # The version's manifest and policy, parsed once a batch for both uses.
            policy = stored_policy(version.read_manifest())
            thresholds[version.id] = policy.per_label if policy else {}
            margins[version.id] = policy.none_margin if policy else 0.0
            offered[version.id] = offered_k(policy, s.frontier_top_k)
            names[version.id] = model_name(version)
        label, confidence = outcome.label, outcome.confidence
        if margins[version.id] and taxonomy.open_set:
            label, confidence = _with_margin(outcome, taxonomy, margins[version.id])
        limit = thresholds[version.id].get(label, item.run.threshold)
        reason = None
        if confidence < limit:
            reason = EscalationReason.CONFIDENCE
        elif outcome.unfamiliar:
            # Sure, but of a kind it never learnt: the frontier answers, and its answer
            # (none, or a label) becomes teacher data.
            reason = EscalationReason.UNFAMILIAR
        escalated = reason is not None
        # An escalated document's stored distribution holds every label its frontier
        # request will offer (workers/frontier.py reads them from it).
        top_k = s.store_top_k
        if escalated and top_k and offered[version.id] > top_k:
            top_k = offered[version.id]
        prediction = PredictionRow(
            document_id=item.doc_id,
            run_id=item.run.id,
            stage=Stage.SLM,
            label=taxonomy.label_of(label),
            confidence=confidence,
            model=names[version.id],
            latency_ms=outcome.latency_ms,
            prompt_tokens=outcome.prompt_tokens,
            escalated=escalated,
            distribution=outcome.top_k(taxonomy.outcomes, top_k),
            model_version_id=version.id,
            escalation_reason=reason,
            unfamiliarity=outcome.unfamiliarity,
            unfamiliar=outcome.unfamiliar if outcome.unfamiliarity is not None else None,
        )
        state = parked if escalated else DocState.CLASSIFIED
        outcomes.append(SlmOutcome(item.doc_id, state, outcome.truncated, prediction))
    return outcomes


def _with_margin(outcome: Classification, taxonomy: Taxonomy, margin: float) -> tuple[str, float]:
    """The answer when none must beat the best label by the policy's margin."""
    top, prob = answers(outcome.probs[None, :], taxonomy.outcomes.index(NONE_LABEL), margin)
    return taxonomy.outcomes[int(top[0])], float(prob[0])


def process_batch(ids: list[int]) -> int:
    """Classify the still-queued documents among ``ids``; returns how many were handled."""
    work = _load(ids)
    owed: list[int] = []
    if work:
        outcomes = _outcomes(work)
        with session_scope() as session:
            owed = store_slm_outcomes(session, outcomes)
    # After the commit, so that the frontier task finds the state it expects, and a
    # consumer of the results stream reads only labels the store holds.
    results_stream.append(owed)
    _send_follow_ups(ids)
    return len(work)


def _send_follow_ups(ids: list[int]) -> None:
    """Send the frontier tasks the batch's documents are owed: escalations without a
    frontier answer, and audit samples without an audit answer.

    Read from the store after the commit, so that a delivery of this batch that died
    between its commit and its sends is made whole by the redelivery (a frontier task
    sent twice does nothing the second time).
    """
    s = get_settings()
    if not s.frontier_configured:
        return
    with session_scope() as session:
        answered = select(Prediction.document_id).where(
            Prediction.document_id.in_(ids), Prediction.stage == Stage.FRONTIER
        )
        owed = list(
            session.scalars(
                select(Document.id)
                .where(
                    Document.id.in_(ids),
                    state_in([DocState.ESCALATED]),
                    Document.id.not_in(answered),
                )
                .order_by(Document.id)
            )
        )
        audits: list[int] = []
        if s.audit_rate > 0:
            sampled = [i for i in ids if audited(i, s.audit_rate)]
            audited_ = select(Prediction.document_id).where(
                Prediction.document_id.in_(sampled), Prediction.stage == Stage.AUDIT
            )
            audits = list(
                session.scalars(
                    select(Document.id).where(
                        Document.id.in_(sampled),
                        state_in([DocState.CLASSIFIED]),
                        Document.final_stage == Stage.SLM,
                        Document.id.not_in(audited_),
                    )
                )
            )
    for doc_id in owed:
        dispatch(TASK_FRONTIER, [doc_id], queue=s.frontier_queue)
    for doc_id in audits:
        dispatch(TASK_FRONTIER, [doc_id, True], queue=s.frontier_queue)


@app.task(
    name=TASK_SLM,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(RetryableError, OperationalError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def classify_batch(self: Any, document_ids: list[int]) -> int:
    """Celery entry point of the SLM stage; takes document ids only."""
    return process_batch(document_ids)
