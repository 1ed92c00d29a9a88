"""The Redis results stream: every settled document's result appended after its commit,
from the SLM and the frontier stage, through the real stack; an append lost to a broker
that was away is made from the outbox by the sweep; with the setting unset, nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import func, select, text, update

from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, ResultOutbox, Stage
from tests.fake_run import write_fake_run
from tests.helpers import counts, free_port
from tests.stack import Stack
from workers import results_stream
from workers.store import PredictionRow, SlmOutcome, store_slm_outcomes


def _entries(url: str, key: str = "results") -> list[dict[str, str]]:
    raw: Any = redis.Redis.from_url(url).xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def _outbox() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(ResultOutbox)) or 0)


def _queued_run(n: int) -> tuple[int, list[int]]:
    fake = write_fake_run(n, queued=n)
    with session_scope() as session:
        ids = list(session.scalars(select(Document.id).where(Document.run_id == fake.run_id)))
    return fake.run_id, ids


def _settle(run_id: int, ids: list[int]) -> list[int]:
    """The SLM stage's store write for ``ids``, kept with label_00, then its append."""
    outcomes = [
        SlmOutcome(
            doc_id,
            DocState.CLASSIFIED,
            prediction=PredictionRow(doc_id, run_id, Stage.SLM, "label_00", 0.9, "m", 5.0, 10),
        )
        for doc_id in ids
    ]
    with session_scope() as session:
        owed = store_slm_outcomes(session, outcomes)
    results_stream.append(owed)
    return owed


def test_an_append_lost_to_an_absent_broker_is_made_by_the_sweep(
    use_settings: Callable[..., None], pg_url: str, redis_url: str
) -> None:
    import migrations

    migrations.upgrade(pg_url)
    away = f"redis://127.0.0.1:{free_port()}/0"
    use_settings(
        SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_BROKER_URL=away, SHIFTDOWN_RESULTS_STREAM="results"
    )
    run_id, ids = _queued_run(20)
    assert _settle(run_id, ids[:12]) == ids[:12]  # owed, and the append failed
    assert _outbox() == 12
    # A second delivery of the same task settles nothing, so owes nothing more.
    assert _settle(run_id, ids[:12]) == [] and _outbox() == 12
    use_settings(
        SHIFTDOWN_DATABASE_URL=pg_url,
        SHIFTDOWN_BROKER_URL=redis_url,
        SHIFTDOWN_RESULTS_STREAM="results",
    )
    assert results_stream.sweep_outbox() == 0  # too young: still its worker's to append
    with session_scope() as session:
        session.execute(
            update(ResultOutbox).values(created_at=ResultOutbox.created_at - timedelta(minutes=1))
        )
    assert results_stream.sweep_outbox() == 12
    assert _outbox() == 0
    _settle(run_id, ids[12:])  # the broker is back: appended at once
    entries = _entries(redis_url)
    assert sorted(int(e["document_id"]) for e in entries) == sorted(ids)
    assert {e["label"] for e in entries} == {"label_00"} and {e["stage"] for e in entries} == {
        "slm"
    }
    assert "error" not in entries[0] and entries[0]["state"] == "classified"


def test_nothing_is_owed_or_appended_with_the_stream_unset(
    use_settings: Callable[..., None], pg_url: str, redis_url: str
) -> None:
    import migrations

    migrations.upgrade(pg_url)
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_BROKER_URL=redis_url)
    run_id, ids = _queued_run(5)
    assert _settle(run_id, ids) == []
    assert _outbox() == 0 and not redis.Redis.from_url(redis_url).exists("results")


def test_the_full_stack_streams_each_settled_document_once(stack: Stack) -> None:
    env = stack.use(SHIFTDOWN_RESULTS_STREAM="results")
    worker = stack.worker(env)
    try:
        run_id = stack.submit(48, "s")
        stack.settle(run_id)
    finally:
        from tests.helpers import stop

        stop(worker)
    c = counts(run_id)
    assert c["labelled"] == 48, c
    entries = _entries(env["SHIFTDOWN_BROKER_URL"])
    with session_scope() as session:
        stored = {
            str(doc_id): (ext, stage)
            for doc_id, ext, stage in session.execute(
                select(Document.id, Document.external_id, Document.final_stage).where(
                    Document.run_id == run_id
                )
            )
        }
    by_id = {e["document_id"]: e for e in entries}
    assert len(entries) == 48 and set(by_id) == set(stored)  # each once
    assert {e["stage"] for e in entries} == {stage for _, stage in stored.values()}
    assert all(by_id[i]["external_id"] == ext for i, (ext, _) in stored.items())
    with session_scope() as session:
        labels = dict(
            session.execute(
                text("SELECT document_id, label FROM document_labels WHERE run_id = :r"),
                {"r": run_id},
            ).all()
        )
    assert {int(i): e["label"] for i, e in by_id.items()} == labels  # the store's labels
    assert _outbox() == 0
