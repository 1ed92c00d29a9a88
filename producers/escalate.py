"""Send documents that wait for the frontier, or that it failed, to the frontier stage.

What goes by default: documents parked as ``awaiting_frontier`` (no frontier configured,
a budget cap, an outage) and those that ended ``frontier_failed`` through the frontier
being unavailable (an outage before parking existed, or a request it kept failing on
its own). Documents it *refused* (a 4xx other than a rate limit, or answers that stayed
malformed through every retry) fail the same way again and are billed again: they go
only when asked (``refused``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.sql.elements import ColumnElement

from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import DocState, Document
from shiftdown.settings import get_settings
from workers.frontier_breaker import UNAVAILABLE
from workers.frontier_recovery import ID_CHUNK, move_to_escalated, send


@dataclass(frozen=True)
class Selection:
    """Which documents an escalation sends."""

    run_id: int | None = None
    parked: bool = True
    failed_unavailable: bool = True
    refused: bool = False

    def where(self) -> ColumnElement[bool]:
        """The documents' test."""
        failed = Document.state == DocState.FRONTIER_FAILED
        outage = func.coalesce(Document.error, "").like(f"{UNAVAILABLE}%")
        parts = []
        if self.parked:
            parts.append(Document.state == DocState.AWAITING_FRONTIER)
        if self.failed_unavailable:
            parts.append(failed & outage)
        if self.refused:
            parts.append(failed & ~outage)
        test = parts[0]
        for part in parts[1:]:
            test = test | part
        if self.run_id is not None:
            test = test & (Document.run_id == self.run_id)
        return test

    @property
    def states(self) -> list[str]:
        """The states a selected document leaves."""
        states: list[str] = []
        if self.parked:
            states.append(DocState.AWAITING_FRONTIER)
        if self.failed_unavailable or self.refused:
            states.append(DocState.FRONTIER_FAILED)
        return states


def _ids(selection: Selection, after: int) -> Select[int]:
    return (
        select(Document.id)
        .where(selection.where(), Document.id > after)
        .order_by(Document.id)
        .limit(ID_CHUNK)
    )


def count_pending(selection: Selection) -> int:
    """How many documents ``selection`` would send now."""
    with session_scope() as session:
        return int(
            session.scalar(select(func.count()).select_from(Document).where(selection.where())) or 0
        )


def escalate_pending(selection: Selection | None = None) -> int:
    """Send the selected documents (by default every parked one, and those failed by
    an outage), ``ID_CHUNK`` at a time; returns how many."""
    if not get_settings().frontier_configured:
        raise ConfigError("no frontier configured: set OPENAI_API_KEY and/or OPENAI_BASE_URL")
    selection = selection or Selection()
    if not selection.states:
        return 0
    sent, after = 0, 0
    while True:
        with session_scope() as session:
            ids = list(session.scalars(_ids(selection, after)))
            # Only those still parked or failed when they are moved are sent: a recovery
            # pass may have sent some in between.
            moved = move_to_escalated(session, ids, selection.states) if ids else []
        send(moved)
        sent += len(moved)
        if len(ids) < ID_CHUNK:
            return sent
        after = ids[-1]
