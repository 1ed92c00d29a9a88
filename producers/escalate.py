"""Send parked documents (``awaiting_frontier``), and those the frontier failed
(``frontier_failed``), to the frontier stage."""

from __future__ import annotations

from sqlalchemy import select

from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import DocState, Document
from shiftdown.settings import get_settings
from workers.frontier_recovery import resend


def escalate_pending(run_id: int | None = None, failed: bool = True) -> int:
    """Enqueue every parked document (of one run, or all), and with ``failed`` every one
    that ended ``frontier_failed``; returns how many."""
    if not get_settings().frontier_configured:
        raise ConfigError("no frontier configured: set OPENAI_API_KEY and/or OPENAI_BASE_URL")
    states = [DocState.AWAITING_FRONTIER] + ([DocState.FRONTIER_FAILED] if failed else [])
    with session_scope() as session:
        query = select(Document.id).where(Document.state.in_(states))
        if run_id is not None:
            query = query.where(Document.run_id == run_id)
        ids = list(session.scalars(query.order_by(Document.id)))
    # Only those still parked or failed when they are moved are sent: a recovery pass
    # may have sent some in between.
    return resend(ids, states)
