"""Lost hand-offs, found and made again: documents still ``queued`` or ``escalated`` long
after their last change, with no task for them on the broker, are enqueued again.

A hand-off is lost when a message never reaches the broker (a publish that failed after
its documents were committed: an SLM task's frontier follow-ups, a producer's chunk) or
when the broker loses it (a restart without persistence). The documents' own state is
the durable record of what is owed, so a sweep over the store finds every such case.
Re-sending is safe: every task re-reads its documents and does nothing for those done.

``sweep`` is what workers run on their own every ``SHIFTDOWN_RECONCILE_INTERVAL_S``
(Postgres only): one pass at a time across all workers (a transaction-level advisory
lock), at most ``SHIFTDOWN_RECONCILE_MAX_PER_PASS`` documents, oldest first, through a
partial index on the unsettled documents' ``updated_at``. ``shiftdown reconcile RUN``
does the same for one run, by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, Run, Task, state_in, utcnow
from shiftdown.settings import get_settings
from workers.app import TASK_FRONTIER, TASK_SLM, app, dispatch
from workers.broker import in_flight

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock's key for the sweep ("shiftdwv" read as a number).
SWEEP_LOCK = 0x7368696674647776
UNSETTLED = [DocState.QUEUED, DocState.ESCALATED]


@dataclass
class Requeued:
    """What a reconciliation found and sent again."""

    unsettled: int = 0
    in_flight: int = 0
    requeued_slm: int = 0
    requeued_frontier: int = 0
    skipped: bool = False  # another sweep held the lock


def unsettled(
    session: Session, older_than_s: float, limit: int | None = None, run_id: int | None = None
) -> list[tuple[int, str, str]]:
    """(document id, state, SLM queue) of queued and escalated documents unchanged for
    ``older_than_s`` seconds (younger ones may be between their commit and their
    message), oldest first."""
    s = get_settings()
    query = (
        select(Document.id, Document.state, func.coalesce(Task.queue, s.slm_queue))
        .join(Run, Run.id == Document.run_id)
        .join(Task, Task.name == Run.task_name)
        .where(
            # In batch mode escalations wait for the batch pass, not for a task.
            Document.state.in_(UNSETTLED if s.frontier_mode == "sync" else [DocState.QUEUED]),
            Document.updated_at <= utcnow() - timedelta(seconds=older_than_s),
        )
        .order_by(Document.updated_at)
    )
    if run_id is not None:
        query = query.where(Document.run_id == run_id)
    if limit is not None:
        query = query.limit(limit)
    return [(doc_id, state, queue) for doc_id, state, queue in session.execute(query)]


def requeue(rows: Sequence[tuple[int, str, str]], dry_run: bool = False) -> Requeued:
    """Send again the tasks of ``rows`` (from ``unsettled``) that the broker does not
    carry; returns the counts."""
    s = get_settings()
    if not rows:  # the usual pass: nothing old enough, and no broker scan
        return Requeued()
    eager = app.conf.task_always_eager
    slm_queues = {queue for _, _, queue in rows}
    carried = {
        DocState.QUEUED: set() if eager else in_flight(slm_queues, (TASK_SLM,)),
        DocState.ESCALATED: set() if eager else in_flight([s.frontier_queue], (TASK_FRONTIER,)),
    }
    result = Requeued(unsettled=len(rows))
    lost_slm: dict[str, list[int]] = {}
    lost_frontier: list[int] = []
    for doc_id, state, queue in rows:
        if doc_id in carried[DocState(state)]:
            result.in_flight += 1
        elif state == DocState.QUEUED:
            lost_slm.setdefault(queue, []).append(doc_id)
        else:
            lost_frontier.append(doc_id)
    result.requeued_slm = sum(len(ids) for ids in lost_slm.values())
    result.requeued_frontier = len(lost_frontier)
    if dry_run:
        return result
    for queue, ids in lost_slm.items():
        for i in range(0, len(ids), s.slm_batch_size):
            dispatch(TASK_SLM, [ids[i : i + s.slm_batch_size]], queue)
    for doc_id in lost_frontier:
        dispatch(TASK_FRONTIER, [doc_id], s.frontier_queue)
    return result


def sweep() -> Requeued:
    """One automatic pass over every run (Postgres): skipped while another worker's
    pass holds the lock. The documents it looked at are touched, so that the next pass,
    here or on another worker, leaves them to their tasks for another bound."""
    s = get_settings()
    with session_scope() as session:
        locked = session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK)))
        if not locked:
            return Requeued(skipped=True)
        rows = unsettled(session, s.reconcile_after_s, s.reconcile_max_per_pass)
        result = requeue(rows)
        seen = [doc_id for doc_id, _, _ in rows]
        if seen and (result.requeued_slm or result.requeued_frontier):
            session.execute(
                update(Document)
                .where(Document.id.in_(seen), state_in(UNSETTLED))
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    if result.requeued_slm or result.requeued_frontier:
        log.warning(
            "reconciled lost hand-offs: %d to the SLM, %d to the frontier (%d unsettled, "
            "%d still carried)",
            result.requeued_slm,
            result.requeued_frontier,
            result.unsettled,
            result.in_flight,
        )
    return result


class Sweeper:
    """Runs ``work`` (default: ``sweep``) every ``interval_s`` on a daemon thread until
    stopped."""

    def __init__(self, interval_s: float, work: Callable[[], object] | None = None) -> None:
        self.interval_s = interval_s
        self._work = work or sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shiftdown-sweep", daemon=True)

    def start(self) -> Sweeper:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the pass in progress."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._work()
            except Exception:  # the broker or the store is away: the next pass tries again
                log.warning("reconciliation pass failed; trying again later", exc_info=True)
