"""Find a run's documents that have no final result and no task on the broker (lost
with a broker that restarted without persistence, say) and enqueue them again: the
operator's ``shiftdown reconcile``. Workers do the same on their own, for every run
(``workers/reconcile.py``).

Safe to run at any time: every task re-reads its documents and does nothing for those
already done, so a document enqueued twice is classified (and billed) once.
"""

from __future__ import annotations

from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import Run
from workers.reconcile import Requeued, requeue, unsettled


def reconcile(run_id: int, min_age_s: float = 60.0, dry_run: bool = False) -> Requeued:
    """Re-enqueue the run's queued and escalated documents that no task on the broker
    carries, once they are ``min_age_s`` old (younger ones may be between their commit
    and their message)."""
    with session_scope() as session:
        if session.get(Run, run_id) is None:
            raise ConfigError(f"no run {run_id}")
        rows = unsettled(session, min_age_s, run_id=run_id)
    return requeue(rows, dry_run)
