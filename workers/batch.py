"""Batch mode (``SHIFTDOWN_FRONTIER_MODE=batch``): escalations reach the frontier through
OpenAI's Batch API, at its batch price, for runs that can wait.

Two passes, run by every worker every ``SHIFTDOWN_FRONTIER_BATCH_POLL_S`` (and by
``shiftdown batches``):

- **send**: escalated documents no batch carries are gathered (once the oldest has
  waited ``SHIFTDOWN_FRONTIER_BATCH_WAIT_S``, or a full batch waits) into one batch. The
  batch row and its documents are committed first (``preparing``), then its file is
  uploaded and the batch created with the row's id in its metadata, then the row is
  marked ``submitted``, all under a lock on the row. A worker that takes over a dead
  one's batch finds it at the provider by that metadata instead of creating (and paying
  for) a second one.
- **collect**: each submitted batch is polled; once it has ended (completed, expired,
  failed, cancelled) every line is recorded as a ``frontier_calls`` row with its tokens
  and the batch price, in the same transaction that takes the document out of the batch
  (a conditional update), so a worker that dies mid-collection leaves the rest for the
  next pass and nothing is recorded, or billed in the report, twice. An answer settles
  its document; "none of these" sends it to the next batch with the whole taxonomy; a
  failed or expired line sends it to the next batch until its attempts run out, then
  the document ends ``frontier_failed`` with the reason.

Budget caps are checked per run as a batch is gathered (documents of a run past its cap
are parked with the reason, as in synchronous mode); a batch in flight can overshoot a
cap by what it carries. Audits stay synchronous.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.registry import task_taxonomy
from shiftdown.db import session_scope
from shiftdown.prompts import narrowed
from shiftdown.schema import (
    BatchState,
    DocState,
    Document,
    FrontierBatch,
    Run,
    Task,
    as_utc,
    utcnow,
)
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy
from workers import results_stream
from workers.frontier import (
    attempts_made,
    candidates_for,
    get_client,
    over_budget,
    record_outcome,
    stored_candidates,
)
from workers.frontier_client import FrontierResult
from workers.store import move_documents

log = logging.getLogger(__name__)

# Postgres advisory lock of the send pass: one worker gathers at a time.
SEND_LOCK = 0x5D0B_A7C4
ENDED = ("completed", "expired", "failed", "cancelled")
METADATA_KEY = "shiftdown_batch"
_CUSTOM_ID = re.compile(r"^doc-(\d+)-k(\d+)$")


@dataclass(frozen=True)
class Line:
    """One output line: the HTTP status, the chat completion (None for a failed
    request), and the error text of a failed one."""

    status_code: int
    body: dict[str, Any] | None
    error: str | None
    offered: int = 0  # candidate labels the request offered (0: the whole taxonomy)


def custom_id(document_id: int, offered: int) -> str:
    """A line's id: its document, and how many candidate labels it offered (0: all)."""
    return f"doc-{document_id}-k{offered}"


def _lock(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite runs one process
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(SEND_LOCK))))


def _gather(session: Session, now: bool = False) -> int | None:
    """Assign the waiting escalations to a new batch (committed by the caller); its id,
    or None when none is due (``now``: whatever waits is due)."""
    s = get_settings()
    if not _lock(session):
        return None
    waiting = session.execute(
        select(Document.id, Document.run_id, Document.updated_at)
        .where(Document.state == DocState.ESCALATED, Document.frontier_batch_id.is_(None))
        .order_by(Document.updated_at, Document.id)
        .limit(s.frontier_batch_max_requests)
    ).all()
    if not waiting:
        return None
    oldest = min(row.updated_at for row in waiting)
    due = (
        now
        or len(waiting) >= s.frontier_batch_max_requests
        or (utcnow() - as_utc(oldest) >= timedelta(seconds=s.frontier_batch_wait_s))
    )
    if not due:
        return None
    ids = []
    for run_id in sorted({row.run_id for row in waiting}):
        mine = [row.id for row in waiting if row.run_id == run_id]
        capped = over_budget(session, run_id)
        if capped:
            move_documents(
                session, mine, [DocState.ESCALATED], state=DocState.AWAITING_FRONTIER, error=capped
            )
        else:
            ids += mine
    if not ids:
        return None
    batch = FrontierBatch(state=BatchState.PREPARING, requests=len(ids), model=get_client().model)
    session.add(batch)
    session.flush()
    session.execute(
        update(Document)
        .where(Document.id.in_(ids), Document.frontier_batch_id.is_(None))
        .values(frontier_batch_id=batch.id)
        .execution_options(synchronize_session=False)
    )
    return batch.id


def _lines(session: Session, batch_id: int) -> bytes:
    """The batch's input file: one JSON line per document it carries."""
    client = get_client()
    out = io.StringIO()
    docs = session.scalars(select(Document).where(Document.frontier_batch_id == batch_id))
    taxonomies: dict[str, Taxonomy] = {}
    for doc in docs:
        run = session.get_one(Run, doc.run_id)
        if run.task_name not in taxonomies:
            taxonomies[run.task_name] = task_taxonomy(session.get_one(Task, run.task_name))
        taxonomy = taxonomies[run.task_name]
        candidates = candidates_for(session, doc, run, taxonomy)
        offered = taxonomy if not candidates else narrowed(taxonomy, candidates)
        line = {
            "custom_id": custom_id(doc.id, len(candidates) if candidates else 0),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": client.request_body(doc.text, offered),
        }
        out.write(json.dumps(line) + "\n")
    return out.getvalue().encode("utf-8")


def _find_at_provider(batch_id: int) -> Any | None:
    """A provider batch created for row ``batch_id`` that was never recorded."""
    for remote in get_client().api.batches.list(limit=100):
        if (remote.metadata or {}).get(METADATA_KEY) == str(batch_id):
            return remote
    return None


def _create_at_provider(batch_id: int) -> int:
    """Upload the batch's file and create it at the provider (or adopt the one a dead
    worker created), then mark it submitted; returns its requests (0 when another worker
    has it). All under a lock on its row, so that one worker does it: a worker that dies
    holding the lock loses its connection, and with it the lock, and the next pass takes
    the batch over at once."""
    api = get_client().api
    with session_scope() as session:
        row = session.scalar(
            select(FrontierBatch)
            .where(FrontierBatch.id == batch_id, FrontierBatch.state == BatchState.PREPARING)
            .with_for_update(skip_locked=True)
        )
        if row is None:
            return 0  # done, or another worker is on it
        remote = _find_at_provider(batch_id)
        if remote is None:
            data = _lines(session, batch_id)
            uploaded = api.files.create(file=(f"shiftdown-{batch_id}.jsonl", data), purpose="batch")
            remote = api.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={METADATA_KEY: str(batch_id)},
            )
        row.state = BatchState.SUBMITTED
        row.provider_batch_id = remote.id
        row.input_file_id = remote.input_file_id
        row.provider_status = remote.status
        row.submitted_at = utcnow()
        requests = row.requests
    log.info("sent batch %d (%s)", batch_id, remote.id)
    return requests


def send_pass(now: bool = False) -> int:
    """Create the batches that are due (``now``: send whatever waits), and finish any a
    dead worker left preparing; returns how many requests were sent."""
    with session_scope() as session:
        preparing = list(
            session.scalars(
                select(FrontierBatch.id).where(FrontierBatch.state == BatchState.PREPARING)
            )
        )
    sent = sum(_create_at_provider(left) for left in preparing)
    with session_scope() as session:
        new = _gather(session, now)
    if new is not None:
        sent += _create_at_provider(new)
    return sent


def _output(file_id: str | None) -> dict[int, Line]:
    """The lines of an output or error file, by document id."""
    if not file_id:
        return {}
    text = get_client().api.files.content(file_id).text
    lines: dict[int, Line] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        item = json.loads(raw)
        match = _CUSTOM_ID.match(str(item.get("custom_id", "")))
        if match is None:
            continue
        response = item.get("response") or {}
        error = item.get("error") or (response.get("body") or {}).get("error")
        status = int(response.get("status_code") or 0)
        body = response.get("body") if status and status < 400 else None
        message = error.get("message") if isinstance(error, dict) else error
        lines[int(match.group(1))] = Line(status, body, message, int(match.group(2)))
    return lines


def _record_line(batch: FrontierBatch, document_id: int, line: Line, latency_ms: float) -> bool:
    """Record one line and take its document out of the batch, in one transaction;
    False when another pass already did."""
    s = get_settings()
    with session_scope() as session:
        taken = session.execute(
            update(Document)
            .where(Document.id == document_id, Document.frontier_batch_id == batch.id)
            .values(frontier_batch_id=None)
            .execution_options(synchronize_session=False)
        )
        if not getattr(taken, "rowcount", 0):
            return False
        doc = session.get_one(Document, document_id)
        run = session.get_one(Run, doc.run_id)
        taxonomy = task_taxonomy(session.get_one(Task, run.task_name))
        candidates = stored_candidates(session, document_id, line.offered) if line.offered else None
        result: FrontierResult = get_client().batch_result(
            line.status_code, line.body, line.error, taxonomy, candidates, latency_ms
        )
        final = attempts_made(session, document_id) + 1 > s.frontier_task_retries
        record_outcome(session, document_id, run.id, result, final, batch_id=batch.id)
    results_stream.append([document_id])  # a no-op unless that settled it
    return True


def collect_pass() -> int:
    """Poll every submitted batch and record those that have ended; returns how many
    lines were recorded."""
    api = get_client().api
    with session_scope() as session:
        submitted = list(
            session.scalars(
                select(FrontierBatch).where(FrontierBatch.state == BatchState.SUBMITTED)
            )
        )
        session.expunge_all()
    recorded = 0
    for batch in submitted:
        assert batch.provider_batch_id is not None
        remote = api.batches.retrieve(batch.provider_batch_id)
        if remote.status not in ENDED:
            with session_scope() as session:
                session.execute(
                    update(FrontierBatch)
                    .where(FrontierBatch.id == batch.id)
                    .values(provider_status=remote.status)
                )
            continue
        lines = {**_output(remote.error_file_id), **_output(remote.output_file_id)}
        started = batch.submitted_at or batch.created_at
        latency_ms = max(0.0, (utcnow() - as_utc(started)).total_seconds() * 1000.0)
        with session_scope() as session:
            carried = list(
                session.scalars(select(Document.id).where(Document.frontier_batch_id == batch.id))
            )
        for document_id in carried:
            line = lines.get(document_id) or Line(0, None, f"batch {remote.status}: no answer")
            recorded += _record_line(batch, document_id, line, latency_ms)
        with session_scope() as session:
            session.execute(
                update(FrontierBatch)
                .where(FrontierBatch.id == batch.id)
                .values(
                    state=BatchState.RECORDED, provider_status=remote.status, finished_at=utcnow()
                )
            )
        log.info("recorded batch %d (%s): %s", batch.id, remote.id, remote.status)
    return recorded


def batch_pass(now: bool = False) -> tuple[int, int]:
    """One send pass and one collect pass: (requests sent, lines recorded)."""
    return send_pass(now), collect_pass()


def pending() -> int:
    """Escalations waiting for a batch or carried by one not yet recorded."""
    with session_scope() as session:
        return int(
            session.scalar(select(func.count()).where(Document.state == DocState.ESCALATED)) or 0
        )
