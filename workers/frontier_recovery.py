"""The recovery pass after a frontier outage: documents parked by it go back to the
frontier once it answers again.

One pass at a time across the whole deployment: every worker runs the pass on its
timer, but a pass takes a Postgres advisory lock and reads and writes where recovery
stands in one shared row (``frontier_recovery``), so N workers make one recovery.

A pass finds the documents waiting as ``awaiting_frontier`` with the outage's error
(``frontier_breaker.UNAVAILABLE``; documents parked for a budget or for want of a
configured frontier wait for ``shiftdown escalate``) and moves through three steps:

- **probe**: one parked document is sent. Answered (or refused for itself): the
  frontier is back. Parked again: still down, and the next pass probes the next parked
  document, never the same one twice in a row (a request the frontier keeps failing
  on its own must not hold the rest back). Not back after ``patience_s()`` (its task
  lost, or held by a busy worker until the broker's visibility timeout): the same.
- **chunks**: once the frontier answers, parked documents go in chunks of
  ``SHIFTDOWN_FRONTIER_RECOVER_CHUNK``, oldest first; the next chunk once this one has
  settled (or ``patience_s()`` has passed), and none when as many of the last chunk
  were parked again as were answered: a new outage, and the next pass probes again.
- **idle**: nothing parked by an outage; the next outage starts from a probe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, FrontierRecovery, as_utc, state_in, utcnow
from shiftdown.settings import get_settings
from workers.app import TASK_FRONTIER, dispatch
from workers.frontier import lease_s
from workers.frontier_breaker import UNAVAILABLE

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock's key for the recovery pass ("shiftdfr").
RECOVER_LOCK = int.from_bytes(b"shiftdfr", "big") >> 1
# Ids per statement when documents are moved by id (Postgres takes at most 65,535
# parameters in one statement).
ID_CHUNK = 10_000


def patience_s() -> float:
    """How long a sent probe or chunk may stay on its way before the pass goes on
    without it: a delivery's lease (its call with all client retries), plus a pass."""
    return lease_s() + get_settings().frontier_recover_interval_s


def _parked() -> ColumnElement[bool]:
    return (Document.state == DocState.AWAITING_FRONTIER) & Document.error.like(f"{UNAVAILABLE}%")


def parked_by_outage(session: Session, after: int, limit: int) -> list[int]:
    """Ids of documents waiting for the frontier because of an outage, above ``after``,
    oldest first."""
    query = (
        select(Document.id).where(_parked(), Document.id > after).order_by(Document.id).limit(limit)
    )
    return list(session.scalars(query))


def move_to_escalated(
    session: Session, ids: Sequence[int], from_states: Sequence[str] = (DocState.AWAITING_FRONTIER,)
) -> list[int]:
    """Move the documents of ``ids`` still in one of ``from_states`` back to escalated,
    in chunks of ``ID_CHUNK``; returns those moved (another pass, or an operator's
    ``shiftdown escalate``, may have taken some)."""
    moved: list[int] = []
    for i in range(0, len(ids), ID_CHUNK):
        moved += session.scalars(
            update(Document)
            .where(Document.id.in_(ids[i : i + ID_CHUNK]), state_in(from_states))
            .values(state=DocState.ESCALATED, error=None)
            .returning(Document.id)
            .execution_options(synchronize_session=False)
        )
    return moved


def send(ids: Sequence[int]) -> None:
    """One frontier task for each document (moved to escalated, committed)."""
    queue = get_settings().frontier_queue
    for doc_id in ids:
        dispatch(TASK_FRONTIER, [doc_id], queue=queue)


def recover_pass() -> int:
    """One pass (see the module's docstring); returns the documents sent."""
    with session_scope() as session:
        if session.get_bind().dialect.name == "postgresql" and not session.scalar(
            select(func.pg_try_advisory_xact_lock(RECOVER_LOCK))
        ):
            return 0  # another worker's pass is under way
        state = session.get(FrontierRecovery, 1)
        if state is None:
            state = FrontierRecovery(id=1)
            session.add(state)
        ids = _step(session, state, utcnow())
        moved = move_to_escalated(session, ids)
        if moved:
            state.sent_at = utcnow()
    send(moved)
    return len(moved)


def _step(session: Session, state: FrontierRecovery, now: datetime) -> list[int]:
    """What this pass sends, with ``state`` moved on accordingly."""
    waited = (now - as_utc(state.sent_at)).total_seconds() if state.sent_at else None
    overdue = waited is None or waited >= patience_s()
    if state.probe_id is not None:
        probe_state, error = session.execute(
            select(Document.state, Document.error).where(Document.id == state.probe_id)
        ).one_or_none() or (None, None)
        if probe_state == DocState.ESCALATED and not overdue:
            return []  # still on its way
        down = probe_state == DocState.ESCALATED or (
            probe_state == DocState.AWAITING_FRONTIER and (error or "").startswith(UNAVAILABLE)
        )
        if down:
            return _probe(session, state, after=state.probe_id)
        log.info("the frontier answers again: sending parked documents in chunks")
        state.probe_id = None
        return _chunk(session, state, after=0)
    if state.chunk_to is not None:
        parked_again, answered, on_way = _chunk_outcome(session, state)
        if parked_again and parked_again >= answered:
            log.warning(
                "%d of the last recovery chunk parked again, %d answered: the frontier is "
                "down again; probing",
                parked_again,
                answered,
            )
            return _probe(session, state, after=state.chunk_from - 1 if state.chunk_from else 0)
        if on_way and not overdue:
            return []
        return _chunk(session, state, after=state.chunk_to)
    return _probe(session, state, after=0)


def _probe(session: Session, state: FrontierRecovery, after: int) -> list[int]:
    ids = parked_by_outage(session, after, 1) or parked_by_outage(session, 0, 1)
    state.chunk_from = state.chunk_to = None
    state.probe_id = ids[0] if ids else None
    return ids


def _chunk(session: Session, state: FrontierRecovery, after: int) -> list[int]:
    size = get_settings().frontier_recover_chunk
    # From the start again once past the last: documents parked again since (the ones
    # the frontier fails on their own, until they run out of calls) go round once more.
    ids = parked_by_outage(session, after, size) or parked_by_outage(session, 0, size)
    state.probe_id = None
    state.chunk_from, state.chunk_to = (ids[0], ids[-1]) if ids else (None, None)
    return ids


def _chunk_outcome(session: Session, state: FrontierRecovery) -> tuple[int, int, int]:
    """Of the last chunk's id range, since it was sent: documents parked again by an
    outage, documents settled otherwise, documents still on their way."""
    since = state.sent_at
    parked_again = func.sum(
        case(
            (
                _parked() & (Document.updated_at >= since),
                1,
            ),
            else_=0,
        )
    )
    answered = func.sum(
        case(
            (
                Document.state.not_in([DocState.AWAITING_FRONTIER, DocState.ESCALATED])
                & (Document.updated_at >= since),
                1,
            ),
            else_=0,
        )
    )
    on_way = func.sum(case((Document.state == DocState.ESCALATED, 1), else_=0))
    row = session.execute(
        select(parked_again, answered, on_way).where(
            Document.id.between(state.chunk_from, state.chunk_to)
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)
