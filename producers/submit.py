"""Submit a stream of records to a task: create a run, store documents in bulk, and
enqueue SLM tasks of ``slm_batch_size`` document ids, pausing while the queue is deep.

Documents are committed before their task is sent, so a worker always finds them. A
chunk goes when it holds about 1,000 documents or when its oldest has waited
``SHIFTDOWN_SUBMIT_LINGER_MS`` (producers/linger.py), so a slow stream is not held back;
each chunk is one INSERT, stored on a thread while the chunk before is published, and
its tasks leave in one Redis pipeline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import BatchPublishError
from sqlalchemy import func, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from models.policy import stored_policy
from models.registry import ensure_task, label_mismatch, resolve_model
from producers.linger import LingeringChunks, lingering_chunks
from producers.readers import Record, Rejected
from shiftdown.db import insert_or_skip, session_scope
from shiftdown.schema import DocState, Document, InputError, ModelVersion, Run, Task, utcnow
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy
from workers.app import TASK_FRONTIER, TASK_SLM, app, dispatch, queue_depth
from workers.store import move_documents

log = logging.getLogger(__name__)

# Documents per transaction (rounded down to whole tasks); tasks are cut from each chunk
# after it commits.
CHUNK = 1000


@dataclass
class SubmitResult:
    """What a submission stored and rejected."""

    run_id: int
    submitted: int = 0
    rejected: int = 0
    duplicates: int = 0


def create_run(
    task_name: str,
    taxonomy: Taxonomy | None,
    model_ref: str | None,
    source: str,
    open_set: bool | None = None,
) -> tuple[int, str]:
    """A new run of ``task_name`` (created on first use), pinned to its model version;
    ``open_set`` opens or closes the task first (None: leaves it as it is).

    Returns the run id and the SLM queue of the task.
    """
    s = get_settings()
    with session_scope() as session:
        task = ensure_task(session, task_name, taxonomy, s.threshold, open_set)
        version = resolve_model(session, task, model_ref, s.model_path)
        policy = stored_policy(version.read_manifest())
        run = Run(
            task_name=task.name,
            model_version_id=version.id,
            # The version's solved policy wins over the task's hand-set threshold.
            threshold=policy.threshold if policy else task.threshold,
            source=source,
            slm_bypass=label_mismatch(version, task),
        )
        session.add(run)
        session.flush()
        return run.id, task.queue or s.slm_queue


def preload_model(run_id: int) -> None:
    """Load the run's model now, in embedded mode, where this process classifies: the
    first document of a stream is then labelled in milliseconds, not after the model's
    load. A model that cannot load is left for the first batch to report."""
    if not app.conf.task_always_eager:
        return
    from models.registry import task_taxonomy
    from workers.slm import get_classifier

    try:
        with session_scope() as session:
            run = session.get_one(Run, run_id)
            version = session.get_one(ModelVersion, run.model_version_id)
            taxonomy = task_taxonomy(session.get_one(Task, run.task_name))
        get_classifier(version, taxonomy)
    except Exception:
        log.debug("could not preload the model of run %d", run_id, exc_info=True)


def reopen_run(run_id: int) -> str | None:
    """The SLM queue of an open run (a follower or stream consumer resuming it), or
    None when there is no such run or it was closed."""
    s = get_settings()
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None or run.submitted_at is not None:
            return None
        task = session.get_one(Task, run.task_name)
        return task.queue or s.slm_queue


# Postgres: the chunk as one JSON parameter. A multi-row VALUES insert of a 1,000-document
# chunk has 8,000 placeholders, and psycopg parses a statement that long afresh for every
# chunk (half the producer's time); this statement is short and the same every time, and
# json.dumps builds its one parameter in C (a text array per column cost the client a
# third more CPU per chunk). The readers have already refused the NUL and lone-surrogate
# escapes that Postgres's JSON-to-text would refuse.
_PG_INSERT_DOCUMENTS = sql_text(
    """
    INSERT INTO documents
        (run_id, external_id, line_no, text, meta, state, truncated, created_at, updated_at)
    SELECT :run_id, u.external_id, u.line_no, u.text, u.meta, :state, false, :now, :now
    FROM json_to_recordset(CAST(:rows AS json))
        AS u(external_id text, line_no integer, text text, meta jsonb)
    ON CONFLICT (run_id, external_id) DO NOTHING
    RETURNING id, external_id
    """
)


def _insert_documents(session: Session, run_id: int, records: list[Record]) -> dict[str, int]:
    """Insert ``records`` as queued documents, skipping ids the run already has;
    returns the new documents' ids by external id."""
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        payload = json.dumps(
            [
                {"external_id": r.external_id, "line_no": r.line_no, "text": r.text, "meta": r.meta}
                for r in records
            ]
        )
        params = {"run_id": run_id, "state": DocState.QUEUED.value, "now": now, "rows": payload}
        return {ext: doc_id for doc_id, ext in session.execute(_PG_INSERT_DOCUMENTS, params)}
    stmt = insert_or_skip(session, Document, ["run_id", "external_id"]).returning(
        Document.id, Document.external_id
    )
    rows = [
        {
            "run_id": run_id,
            "external_id": r.external_id,
            "line_no": r.line_no,
            "text": r.text,
            "meta": r.meta,
            "state": DocState.QUEUED.value,
            "truncated": False,
            "created_at": now,
            "updated_at": now,
        }
        for r in records
    ]
    return {ext: doc_id for doc_id, ext in session.execute(stmt, rows).all()}


@dataclass
class _Stored:
    """One chunk, committed: the new documents' ids in input order, and what was refused."""

    ids: list[int]
    rejected: int
    duplicates: int
    last_line_no: int  # of the chunk's last input record, good or not


def _store_chunk(run_id: int, chunk: list[Record | Rejected], redelivered_ok: bool) -> _Stored:
    """Insert a chunk's records and record its rejects, in one transaction; a duplicate
    id is a reject unless ``redelivered_ok`` (a stream delivers again what it is unsure
    was stored)."""
    good = [r for r in chunk if isinstance(r, Record)]
    bad = [r for r in chunk if isinstance(r, Rejected)]
    with session_scope() as session:
        stored = _insert_documents(session, run_id, good) if good else {}
        ids: list[int] = []
        n_dups = 0
        for r in good:
            doc_id = stored.pop(r.external_id, None)
            if doc_id is None:
                n_dups += 1
                if redelivered_ok:
                    continue
                error = f"line {r.line_no}: duplicate id {r.external_id!r}"
                bad.append(Rejected(r.line_no, error, ""))
            else:
                ids.append(doc_id)
        if bad and redelivered_ok:
            bad = _not_yet_recorded(session, run_id, bad)
        if bad:
            session.execute(
                insert(InputError),
                [
                    {"run_id": run_id, "line_no": r.line_no, "error": r.error, "excerpt": r.excerpt}
                    for r in bad
                ],
            )
    return _Stored(ids, len(bad), n_dups, chunk[-1].line_no)


def _not_yet_recorded(session: Session, run_id: int, bad: list[Rejected]) -> list[Rejected]:
    """The rejects not already in ``input_errors``: an entry delivered again after its
    reject was committed, before its ack, must not count twice. A stream's reject names
    its entry's id in the error, so the error text identifies it."""
    seen = set(
        session.scalars(
            select(InputError.error).where(
                InputError.run_id == run_id, InputError.error.in_({r.error for r in bad})
            )
        )
    )
    return [r for r in bad if r.error not in seen]


def _stored_chunks(
    run_id: int, chunks: LingeringChunks[Record | Rejected], ahead: bool, redelivered_ok: bool
) -> Iterator[_Stored]:
    """Each chunk stored and committed, in order.

    With ``ahead``, the next chunk is stored on a thread while the caller publishes this
    one and the next is read: the INSERT is mostly Postgres's time, and it was half the
    producer's. That holds a stored chunk back until the next one is read, so it is done
    only while the next chunk is already there; a slow stream's chunk is published as
    soon as it is stored. A failure stops at most one chunk further on than it would
    have; its documents wait for ``reconcile`` like those of a producer that died.
    """
    if not ahead:
        for chunk in chunks:
            yield _store_chunk(run_id, chunk, redelivered_ok)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="shiftdown-store") as pool:
        pending: Future[_Stored] | None = None
        try:
            for chunk in chunks:
                done, pending = pending, pool.submit(_store_chunk, run_id, chunk, redelivered_ok)
                if done is not None:
                    yield done.result()
                if not chunks.next_ready():
                    done, pending = pending, None
                    yield done.result()
            if pending is not None:
                done, pending = pending, None
                yield done.result()
        finally:
            if pending is not None:
                pending.cancel()


@contextmanager
def _producer() -> Iterator[Any]:
    # One broker connection for the whole submission, not one per message.
    if app.conf.task_always_eager:
        yield None
    else:
        with app.producer_or_acquire() as producer:
            yield producer


@contextmanager
def _batched(producer: Any) -> Iterator[Callable[[], None]]:
    """Buffer the publishes made inside: each SLM task and its ``task-sent`` event would
    otherwise be one Redis round trip each, half of the producer's time. kombu's Redis
    transport sends a batch as one pipeline when it ends. Yields a function that sends what
    is buffered now."""
    if producer is None or not producer.supports_batch_publish:
        yield lambda: None
    else:
        with producer.batch() as batch:
            yield batch.flush


def _publish_tasks(
    ids: list[int],
    queue: str,
    producer: Any,
    room: int,
    on_progress: Callable[[int], None] | None,
    batched: bool,
) -> int:
    s = get_settings()
    with _batched(producer if batched else None) as flush:
        for i in range(0, len(ids), s.slm_batch_size):
            batch = ids[i : i + s.slm_batch_size]
            # Backpressure: the queue is asked for its depth only once the room it last
            # reported is used up (workers only ever make more); what is buffered goes
            # first, so that the depth counts it.
            while room <= 0:
                flush()
                room = s.max_queue_depth - queue_depth(queue)
                if room <= 0:
                    time.sleep(0.2)
            dispatch(TASK_SLM, [batch], queue, producer, declare=i == 0)
            room -= 1
            if on_progress:
                on_progress(len(batch))
    return room


def _send_tasks(
    ids: list[int],
    queue: str,
    producer: Any,
    room: int,
    on_progress: Callable[[int], None] | None,
) -> int:
    """Send the SLM tasks of ``ids``, documents already committed, in one pipeline;
    returns the room left on the queue."""
    try:
        return _publish_tasks(ids, queue, producer, room, on_progress, batched=True)
    except BatchPublishError as exc:
        # A pipeline is not retried, and whether it reached Redis is unknown: the chunk
        # goes again one task at a time, each with Celery's publish retries. A task sent
        # twice finds its documents done, so nothing is classified or billed twice.
        log.warning("publishing %d documents' tasks again one by one: %s", len(ids), exc)
        return _publish_tasks(ids, queue, producer, room, None, batched=False)


def _to_frontier(ids: list[int]) -> None:
    # The SLM cannot answer for this taxonomy: straight to the frontier (or parked).
    s = get_settings()
    state = DocState.ESCALATED if s.frontier_configured else DocState.AWAITING_FRONTIER
    with session_scope() as session:
        move_documents(session, ids, [DocState.QUEUED], state=state)
    if state == DocState.ESCALATED:
        for doc_id in ids:
            dispatch(TASK_FRONTIER, [doc_id], queue=s.frontier_queue)


def submit_records(
    run_id: int,
    items: Iterable[Record | Rejected],
    queue: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_stored: Callable[[int], None] | None = None,
    close: bool = True,
    redelivered_ok: bool = False,
) -> SubmitResult:
    """Store and enqueue every record of ``items`` under ``run_id``.

    ``on_progress`` is called with the size of each batch sent (in embedded mode, each
    batch classified); ``on_stored`` with the line number of each chunk's last record
    once the chunk is committed (a follower's resume point). With ``close``, the run is
    marked submitted at the end; a streaming producer leaves it open. With
    ``redelivered_ok``, a record whose id the run already has is skipped silently.
    """
    s = get_settings()
    queue = queue or s.slm_queue
    result = SubmitResult(run_id=run_id)
    with session_scope() as session:
        bypass = session.get_one(Run, run_id).slm_bypass
    # A whole number of tasks per chunk, so that no chunk ends in a short task.
    size = s.slm_batch_size * max(1, CHUNK // s.slm_batch_size)
    room = 0  # messages the SLM queue can take before its depth is asked again
    with _producer() as producer:
        chunks = lingering_chunks(items, size, s.submit_linger_ms / 1000)
        stored_chunks = _stored_chunks(run_id, chunks, producer is not None, redelivered_ok)
        for stored in stored_chunks:
            if on_stored:
                on_stored(stored.last_line_no)
            ids = stored.ids
            result.submitted += len(ids)
            result.rejected += stored.rejected
            result.duplicates += stored.duplicates
            if bypass:
                _to_frontier(ids)
                if on_progress:
                    on_progress(len(ids))
                continue
            room = _send_tasks(ids, queue, producer, room, on_progress)
    if close:
        close_run(run_id)
    return result


def close_run(run_id: int) -> None:
    """Mark the run submitted: no more documents will come (``status``, ``wait`` and
    ``results --follow`` then know it can settle). Its counts are the store's, so a run
    fed by several producers or restarts adds up."""
    with session_scope() as session:
        run = session.get_one(Run, run_id)
        run.n_submitted = int(
            session.scalar(select(func.count()).where(Document.run_id == run_id)) or 0
        )
        run.n_rejected = int(
            session.scalar(select(func.count()).where(InputError.run_id == run_id)) or 0
        )
        run.submitted_at = utcnow()
