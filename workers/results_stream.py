"""The results stream (``SHIFTDOWN_RESULTS_STREAM``): each settled document's result
appended to a Redis Stream on the broker's Redis, so consumers in any language read
labels as they settle.

The store keeps the durable record of what is owed: the transaction that settles a
document also writes its ``result_outbox`` row. After the commit the worker appends the
results (one pipeline, ``XADD ... MAXLEN ~``) and deletes their rows; a row left behind
(Redis away, a worker killed between its commit and its append) is appended by the
workers' outbox sweep once it is ``SWEEP_AFTER_S`` old. Delivery is at least once: a
consumer may see a result twice (after such a sweep, or a redelivered task), and
dedupes by ``document_id``, keeping the entry read last: a ``frontier_failed`` document
sent again by ``shiftdown escalate`` settles, and is appended, a second time.

Entry fields: those of ``shiftdown.results.FIELDS`` as text; ``meta`` as JSON; a field
with no value (a failed document's label, a kept one's error) is left out.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from shiftdown.db import session_scope
from shiftdown.results import ResultRow, results_for
from shiftdown.schema import ResultOutbox, utcnow
from shiftdown.settings import get_settings

log = logging.getLogger(__name__)

# A row younger than this is its worker's to append; older, the sweep's.
SWEEP_AFTER_S = 5.0
SWEEP_BATCH = 1000
# pg_try_advisory_xact_lock's key for the outbox sweep ("shiftdrs").
SWEEP_LOCK = 0x7368696674647273

_client: tuple[int, str, redis.Redis] | None = None


def enabled() -> bool:
    """Whether results are streamed: a stream is named and the broker is Redis."""
    s = get_settings()
    return bool(s.results_stream) and (s.broker_url or "").startswith(("redis", "unix"))


def _redis() -> redis.Redis:
    # One client per process (Celery forks its pool after import) and broker URL.
    global _client
    url = get_settings().broker_url or ""
    if _client is None or _client[0] != os.getpid() or _client[1] != url:
        # Short timeouts and one retry: an append waits on a Redis that does not answer
        # for seconds at most, then leaves its results to the sweep.
        client = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 1)
        )
        _client = (os.getpid(), url, client)
    return _client[2]


def owe(session: Session, settled: Iterable[tuple[int, int]]) -> list[int]:
    """Record in ``session`` (the settling transaction) that the results of ``settled``
    (document id, run id) are owed to the stream; returns their ids. Nothing when the
    stream is off."""
    if not enabled():
        return []
    now = utcnow()
    pairs = list(settled)
    if pairs:
        session.execute(
            insert(ResultOutbox),
            [{"document_id": d, "run_id": r, "created_at": now} for d, r in pairs],
        )
    return [d for d, _ in pairs]


def entry(row: ResultRow) -> dict[Any, Any]:
    """A result as a stream entry's fields."""
    fields: dict[Any, Any] = {}
    for key, value in row.as_dict().items():
        if value is None:
            continue
        fields[key] = json.dumps(value) if key == "meta" else str(value)
    return fields


def _xadd(rows: Sequence[ResultRow]) -> None:
    s = get_settings()
    assert s.results_stream is not None
    pipe = _redis().pipeline(transaction=False)
    for row in rows:
        pipe.xadd(s.results_stream, entry(row), maxlen=s.results_stream_maxlen, approximate=True)
    pipe.execute()


def append(document_ids: Sequence[int]) -> int:
    """After the commit that settled them: append the results owed for those of
    ``document_ids`` that have an outbox row, and delete the rows; returns how many
    were appended. The rows are deleted first and the deletion committed only once the
    append is done, so a sweep holding them (row locks) and this append never both
    append one. Redis away is logged and left to the sweep, never raised (the
    documents are settled whatever happens here)."""
    if not document_ids or not enabled():
        return 0
    try:
        with session_scope() as session:
            owed = list(
                session.scalars(
                    delete(ResultOutbox)
                    .where(ResultOutbox.document_id.in_(list(document_ids)))
                    .returning(ResultOutbox.document_id)
                )
            )
            rows = results_for(session, owed)
            _xadd(rows)
        return len(rows)
    except Exception as exc:  # the outbox keeps them for the sweep
        log.warning("appending %d results failed (%r); the sweep will", len(document_ids), exc)
        return 0


def sweep_outbox() -> int:
    """Append what workers left in the outbox (rows older than ``SWEEP_AFTER_S``), a
    bounded batch at a time, one sweep at a time across workers (Postgres); returns how
    many results were appended."""
    if not enabled():
        return 0
    done = 0
    while True:
        with session_scope() as session:
            if not session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK))):
                return done
            ids = list(
                session.scalars(
                    select(ResultOutbox.document_id)
                    .where(ResultOutbox.created_at <= utcnow() - timedelta(seconds=SWEEP_AFTER_S))
                    .order_by(ResultOutbox.id)
                    .limit(SWEEP_BATCH)
                    # A worker appending these right now holds them: they are its.
                    .with_for_update(skip_locked=True)
                )
            )
            if not ids:
                return done
            _xadd(results_for(session, ids))
            session.execute(delete(ResultOutbox).where(ResultOutbox.document_id.in_(ids)))
        done += len(ids)
        log.info("appended %d results the workers had left to the stream", len(ids))
