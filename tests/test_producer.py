"""The producer's promise on the real Postgres and Redis, now that a chunk's tasks leave in
one pipeline and the next chunk is stored while this one is published: a task is sent only
for documents already committed, in input order; a chunk that cannot be stored stops the
submission without sending anything for it; a pipeline lost to a broker blip is sent again
task by task."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from bench.tcp_proxy import TcpProxy
from cli.main import cli
from producers.readers import Record, Rejected
from producers.submit import CHUNK, create_run, submit_records
from shiftdown.db import session_scope
from shiftdown.schema import Document, InputError
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy
from workers.app import queue_depth


def _new_run(taxonomy: Path) -> tuple[int, str]:
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    return create_run("producer", Taxonomy.from_file(taxonomy), None, "test")


def _stored(run_id: int) -> list[int]:
    """The run's documents' ids in input order."""
    with session_scope() as session:
        return list(
            session.scalars(
                select(Document.id).where(Document.run_id == run_id).order_by(Document.line_no)
            )
        )


def _sent(client: redis.Redis, queue: str) -> list[list[int]]:
    """The document ids of every task on ``queue``, oldest first, checked against the
    ``argsrepr`` Flower shows."""
    tasks = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {} and message["headers"]["argsrepr"] == repr(args)
        tasks.append(args[0])
    return tasks


def test_tasks_name_only_committed_documents_and_a_failed_chunk_sends_nothing(
    use_settings: Callable[..., None], pg_url: str, redis_url: str, banking_taxonomy: Path
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_BROKER_URL=redis_url)
    run_id, queue = _new_run(banking_taxonomy)
    s = get_settings()
    size = s.slm_batch_size * (CHUNK // s.slm_batch_size)
    records = [Record(i + 1, f"d{i}", f"query number {i}") for i in range(3 * size)]
    # Postgres refuses NUL in text; the readers refuse it first, so only a caller that
    # skips them can send one, and it lands in the second chunk.
    records[size + 5] = Record(size + 6, "nul", "a NUL \x00 inside")

    with pytest.raises(DBAPIError):
        submit_records(run_id, iter(records), queue)

    client = redis.Redis.from_url(redis_url)
    sent = _sent(client, queue)
    stored = _stored(run_id)
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Document.external_id == "nul")) == 0
    # The first chunk, whole, in tasks of slm_batch_size in input order; nothing of the
    # second; the third may have been stored ahead, but never sent.
    assert [doc_id for task in sent for doc_id in task] == stored[:size]
    assert all(len(task) == s.slm_batch_size for task in sent)
    assert len(stored) in (size, 2 * size)


def test_every_document_is_sent_once(
    use_settings: Callable[..., None], pg_url: str, redis_url: str, banking_taxonomy: Path
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_BROKER_URL=redis_url)
    run_id, queue = _new_run(banking_taxonomy)
    n = 2 * CHUNK + 77  # chunks stored ahead, and a short last task
    records = [Record(i + 1, f"d{i}", f"query number {i}") for i in range(n)]
    records.append(Record(n + 1, "d3", "a duplicate id"))

    result = submit_records(run_id, iter(records), queue)

    assert (result.submitted, result.duplicates, result.rejected) == (n, 1, 1)
    sent = _sent(redis.Redis.from_url(redis_url), queue)
    stored = _stored(run_id)
    assert [doc_id for task in sent for doc_id in task] == stored
    assert len(stored) == n


def test_a_stream_delivering_again_stores_each_document_and_each_reject_once(
    use_settings: Callable[..., None], pg_url: str, redis_url: str, banking_taxonomy: Path
) -> None:
    # A consumer killed after its chunk's commit, before its ack: the next one reads the
    # same entries, good and bad, again.
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_BROKER_URL=redis_url)
    run_id, queue = _new_run(banking_taxonomy)
    chunk = [
        Record(1, "1-0", "my card has not arrived"),
        Rejected(2, "entry 2-0: text is empty", ""),
        Record(3, "3-0", "how do I top up"),
        Rejected(4, "entry 4-0: meta is not a JSON object", ""),
    ]
    first = submit_records(run_id, iter(chunk), queue, close=False, redelivered_ok=True)
    again = submit_records(run_id, iter(chunk[1:]), queue, close=False, redelivered_ok=True)

    assert (first.submitted, first.rejected) == (2, 2)
    assert (again.submitted, again.rejected, again.duplicates) == (0, 0, 1)
    with session_scope() as session:
        errors = session.scalars(select(InputError.error).where(InputError.run_id == run_id))
        assert sorted(errors) == [
            "entry 2-0: text is empty",
            "entry 4-0: meta is not a JSON object",
        ]
    assert len(_stored(run_id)) == 2


def test_a_broker_blip_mid_chunk_costs_no_task(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    banking_taxonomy: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = urlsplit(redis_url).port or 6379
    proxy = TcpProxy(("127.0.0.1", port)).start()
    use_settings(
        SHIFTDOWN_DATABASE_URL=pg_url,
        SHIFTDOWN_BROKER_URL=redis_url.replace(f":{port}", f":{proxy.port}"),
    )
    run_id, queue = _new_run(banking_taxonomy)
    s = get_settings()
    per_chunk = CHUNK // s.slm_batch_size
    n = 3 * per_chunk * s.slm_batch_size
    records = [Record(i + 1, f"d{i}", f"query number {i}") for i in range(n)]
    tasks = 0

    def blip(_docs: int) -> None:
        nonlocal tasks
        tasks += 1
        if tasks == per_chunk + 1:
            # The second chunk's first task is buffered: its connections go, and the next
            # two to arrive are closed, so the pipeline fails where it is sent (redis-py
            # would reconnect once on its own).
            proxy.drop(refuse=2)

    try:
        result = submit_records(run_id, iter(records), queue, on_progress=blip)
    finally:
        proxy.cut()

    assert result.submitted == n
    assert any("again one by one" in r.getMessage() for r in caplog.records)
    sent = _sent(redis.Redis.from_url(redis_url), queue)
    stored = _stored(run_id)
    assert [doc_id for task in sent for doc_id in task] == stored


def test_a_broker_outage_under_the_backpressure_check_is_waited_out(
    use_settings: Callable[..., None], redis_url: str
) -> None:
    # The producer asks the queue's depth before its first publish and whenever the room
    # it was told of is used up. Redis restarting at that moment, its pooled connection
    # closed and new ones refused, ended the submission with a ConnectionError (found by
    # the chaos soak), the rest of the input unsent.
    port = urlsplit(redis_url).port or 6379
    proxy = TcpProxy(("127.0.0.1", port)).start()
    use_settings(
        SHIFTDOWN_BROKER_URL=redis_url.replace(f":{port}", f":{proxy.port}"),
        SHIFTDOWN_PUBLISH_RETRY_S="20",
    )
    redis.Redis.from_url(redis_url).rpush("depth-test", "a", "b")
    assert queue_depth("depth-test") == 2  # the pool now holds a live connection
    proxy.cut()
    back = threading.Timer(2.0, proxy.restore)
    back.start()
    try:
        assert queue_depth("depth-test") == 2
    finally:
        back.cancel()
        proxy.cut()
