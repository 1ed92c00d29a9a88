"""Each worker's recovery pass: documents parked by a frontier outage go back to the
frontier once it answers again.

A pass finds the documents waiting as ``awaiting_frontier`` with the outage's error
(``frontier_breaker.UNAVAILABLE``; documents parked for a budget or for want of a
configured frontier wait for ``shiftdown escalate``). The last document a pass sends
is its probe: a later pass that finds it answered sends the next ``RECOVER_BATCH``, one
that finds it parked again sends a single document (the next probe), and one that finds
it still on its way waits. During an outage that is one task per pass, and at most one
call where a worker's breaker lets its probe through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select, update

from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, state_in
from shiftdown.settings import get_settings
from workers.app import TASK_FRONTIER, dispatch
from workers.frontier_breaker import UNAVAILABLE

log = logging.getLogger(__name__)

# Documents re-sent per pass once the frontier answers: a recovered endpoint is not
# flooded with a whole outage's backlog at once.
RECOVER_BATCH = 10_000

_probe: int | None = None
_up = False


def parked_by_outage(limit: int) -> list[int]:
    """Ids of documents waiting for the frontier because of an outage, oldest first."""
    with session_scope() as session:
        query = (
            select(Document.id)
            .where(
                Document.state == DocState.AWAITING_FRONTIER,
                Document.error.like(f"{UNAVAILABLE}%"),
            )
            .order_by(Document.id)
            .limit(limit)
        )
        return list(session.scalars(query))


def resend(ids: list[int], from_states: Sequence[str] = (DocState.AWAITING_FRONTIER,)) -> int:
    """Move the documents of ``ids`` still in one of ``from_states`` back to escalated
    and send each a frontier task (another worker's pass, or an operator's
    ``shiftdown escalate``, may have taken some); returns how many."""
    if not ids:
        return 0
    with session_scope() as session:
        moved = list(
            session.scalars(
                update(Document)
                .where(Document.id.in_(ids), state_in(from_states))
                .values(state=DocState.ESCALATED, error=None)
                .returning(Document.id)
                .execution_options(synchronize_session=False)
            )
        )
    queue = get_settings().frontier_queue
    for doc_id in moved:
        dispatch(TASK_FRONTIER, [doc_id], queue=queue)
    return len(moved)


def recover_pass() -> int:
    """One pass (see the module's docstring); returns the documents sent."""
    global _probe, _up
    if _probe is not None:
        with session_scope() as session:
            state = session.scalar(select(Document.state).where(Document.id == _probe))
        if state == DocState.ESCALATED:
            return 0  # the probe is still on its way
        # Answered, or refused for itself: the frontier is back. Parked again: still down.
        _up = state != DocState.AWAITING_FRONTIER
        _probe = None
    ids = parked_by_outage(RECOVER_BATCH if _up else 1)
    if ids and _up:
        log.info("the frontier answers: sending %d parked document(s) again", len(ids))
    _probe = ids[-1] if ids else None
    return resend(ids)
