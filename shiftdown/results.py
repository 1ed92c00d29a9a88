"""Each settled document's result as its consumers read it: external id, final label,
the stage that gave it, confidence and frontier dollars.

One query shape serves ``shiftdown results`` (pages of a run by keyset), ``--follow`` and
the Redis results stream (the documents a transaction settled).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import DocState, Document, FrontierCall, Prediction, Run

# States a document leaves only through an operator (escalate, a new run): its result.
FINAL = (DocState.CLASSIFIED, DocState.FAILED, DocState.FRONTIER_FAILED)
FIELDS = (
    "document_id",
    "run_id",
    "external_id",
    "state",
    "label",
    "stage",
    "confidence",
    "frontier_cost_usd",
    "error",
    "meta",
)


@dataclass(frozen=True)
class ResultRow:
    """One settled document's result."""

    document_id: int
    run_id: int
    external_id: str
    state: str
    label: str | None
    stage: str | None
    confidence: float | None
    frontier_cost_usd: float
    error: str | None
    meta: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON takes it, fields in ``FIELDS`` order (a shallow copy: every
        settled document passes here, and ``asdict`` would deep-copy its meta)."""
        return dict(vars(self))


def _rows(session: Session, where: Any, limit: int | None = None) -> list[ResultRow]:
    cost = (
        select(func.coalesce(func.sum(FrontierCall.cost_usd), 0.0))
        .where(FrontierCall.document_id == Document.id)
        .scalar_subquery()
    )
    query = (
        select(
            Document.id,
            Document.run_id,
            Document.external_id,
            Document.state,
            Prediction.label,
            Document.final_stage,
            Prediction.confidence,
            cost,
            Document.error,
            Document.meta,
        )
        .outerjoin(
            Prediction,
            and_(Prediction.document_id == Document.id, Prediction.stage == Document.final_stage),
        )
        .where(where, Document.state.in_(FINAL))
        .order_by(Document.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        ResultRow(doc_id, run_id, ext, state, label, stage, conf, float(usd or 0.0), err, meta)
        for doc_id, run_id, ext, state, label, stage, conf, usd, err, meta in session.execute(query)
    ]


def results_page(session: Session, run_id: int, after_id: int, size: int) -> list[ResultRow]:
    """Up to ``size`` settled documents of the run with ids above ``after_id``, in id
    order: a keyset page (an index range scan, whatever the run's size)."""
    return _rows(session, and_(Document.run_id == run_id, Document.id > after_id), size)


def results_for(session: Session, document_ids: Sequence[int]) -> list[ResultRow]:
    """The results of those of ``document_ids`` that are settled, in id order."""
    if not document_ids:
        return []
    return _rows(session, Document.id.in_(list(document_ids)))


# A document in one of these states has its result, or has none for now (parked until
# ``shiftdown escalate``): what ``shiftdown wait`` and ``--follow`` wait for.
SETTLED = (*FINAL, DocState.AWAITING_FRONTIER)
_UNSETTLED = (DocState.QUEUED, DocState.ESCALATED)
PAGE_SIZE = 1000


def export_pages(run_id: int, page_size: int = PAGE_SIZE) -> Iterator[list[ResultRow]]:
    """The run's settled documents as it stands, page by page in id order.

    Each page is read in its own short session, so memory and the database snapshot
    stay one page big however large the run is (a long read transaction would hold
    back SQLite's checkpoints and Postgres's vacuum)."""
    after = 0
    while True:
        with session_scope() as session:
            page = results_page(session, run_id, after, page_size)
        if not page:
            return
        yield page
        after = page[-1].document_id


@dataclass(frozen=True)
class _Mark:
    """One consistent look at a run, taken before its settled rows are read."""

    submitted: bool
    lowest_unsettled: int | None  # the smallest id still queued or escalated
    highest: int | None  # the largest id the run has


def _mark(session: Session, run_id: int) -> _Mark:
    of_run = Document.run_id == run_id
    # One statement, hence one snapshot on Postgres too: "submitted" and "nothing
    # unsettled" must be true at the same moment for the follower to stop.
    row = session.execute(
        select(
            Run.submitted_at,
            select(func.min(Document.id))
            .where(of_run, Document.state.in_(_UNSETTLED))
            .scalar_subquery(),
            select(func.max(Document.id)).where(of_run).scalar_subquery(),
        ).where(Run.id == run_id)
    ).one_or_none()
    if row is None:
        raise ConfigError(f"no run {run_id}")
    submitted_at, lowest, highest = row
    return _Mark(submitted_at is not None, lowest, highest)


def follow_results(
    run_id: int,
    *,
    poll_s: float = 0.2,
    max_poll_s: float = 2.0,
    page_size: int = PAGE_SIZE,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[ResultRow]]:
    """The run's results as its documents settle, each document once, page by page.

    Documents settle out of id order, so a plain keyset cursor would skip late
    settlers. The follower keeps a low-water mark instead, the smallest id still queued
    or escalated, rereads the settled documents at or above it on every poll, and
    remembers only the ids it printed above it: memory is bounded by the window of
    documents in flight, not by the run.

    Parked documents (``awaiting_frontier``) count as settled for the mark, so that a
    run without a frontier does not hold the whole run in the window; one that
    ``shiftdown escalate`` labels after the mark has passed it is not printed here
    (``shiftdown results`` prints it afterwards).

    Ends once the run is submitted and every document is settled, having yielded every
    final one; an open run (``runs.submitted_at`` NULL, a stream feeding it) is
    followed until the caller stops iterating.
    """
    low = 0  # every document below it was settled, and printed if final
    printed: set[int] = set()  # ids at or above ``low`` already yielded
    wait_s = poll_s
    while True:
        with session_scope() as session:
            mark = _mark(session, run_id)
        # Every document below ``new_low`` was settled when the mark was taken, and a
        # final state is kept, so the scan below (from the old ``low``) sees them all.
        if mark.lowest_unsettled is not None:
            new_low = mark.lowest_unsettled
        else:
            new_low = (mark.highest or 0) + 1
        fresh = 0
        after = low - 1
        while True:
            with session_scope() as session:
                page = results_page(session, run_id, after, page_size)
            if not page:
                break
            after = page[-1].document_id
            new = [row for row in page if row.document_id not in printed]
            if new:
                printed.update(row.document_id for row in new)
                fresh += len(new)
                yield new
        # Monotone: a parked document sent back to the frontier must not pull the mark
        # below ids already forgotten, or they would be printed twice.
        low = max(low, new_low)
        printed = {doc_id for doc_id in printed if doc_id >= low}
        if mark.submitted and mark.lowest_unsettled is None:
            return
        # Back off while nothing settles; answer quickly again once documents flow.
        wait_s = poll_s if fresh else min(max_poll_s, wait_s * 1.5)
        sleep(wait_s)


def parked_count(session: Session, run_id: int) -> int:
    """How many of the run's documents await a frontier (``shiftdown escalate``)."""
    return int(
        session.scalar(
            select(func.count()).where(
                Document.run_id == run_id, Document.state == DocState.AWAITING_FRONTIER
            )
        )
        or 0
    )
