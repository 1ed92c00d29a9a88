"""Find a run's documents that have no final result and no task on the broker (lost
with a broker that restarted without persistence, say) and enqueue them again.

Safe to run at any time: every task re-reads its documents and does nothing for those
already done, so a document enqueued twice is classified (and billed) once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import DocState, Document, Run, Task, utcnow
from shiftdown.settings import get_settings
from workers.app import TASK_FRONTIER, TASK_SLM, app, dispatch
from workers.broker import in_flight


@dataclass
class ReconcileResult:
    """What reconcile found and sent again."""

    unsettled: int = 0
    in_flight: int = 0
    requeued_slm: int = 0
    requeued_frontier: int = 0


def reconcile(run_id: int, min_age_s: float = 60.0, dry_run: bool = False) -> ReconcileResult:
    """Re-enqueue the run's queued and escalated documents that no task on the broker
    carries, once they are ``min_age_s`` old (younger ones may be between their commit
    and their message)."""
    s = get_settings()
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id}")
        queue = session.get_one(Task, run.task_name).queue or s.slm_queue
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        rows = session.execute(
            select(Document.id, Document.state).where(
                Document.run_id == run_id,
                Document.state.in_([DocState.QUEUED, DocState.ESCALATED]),
                Document.updated_at <= cutoff,
            )
        ).all()
    carried = set() if app.conf.task_always_eager else in_flight([queue, s.frontier_queue])
    result = ReconcileResult(unsettled=len(rows))
    lost_slm = [doc_id for doc_id, state in rows if state == DocState.QUEUED]
    lost_frontier = [doc_id for doc_id, state in rows if state == DocState.ESCALATED]
    result.in_flight = sum(d in carried for d in lost_slm + lost_frontier)
    lost_slm = [d for d in lost_slm if d not in carried]
    lost_frontier = [d for d in lost_frontier if d not in carried]
    result.requeued_slm, result.requeued_frontier = len(lost_slm), len(lost_frontier)
    if dry_run:
        return result
    for i in range(0, len(lost_slm), s.slm_batch_size):
        dispatch(TASK_SLM, [lost_slm[i : i + s.slm_batch_size]], queue)
    for doc_id in lost_frontier:
        dispatch(TASK_FRONTIER, [doc_id], s.frontier_queue)
    return result
