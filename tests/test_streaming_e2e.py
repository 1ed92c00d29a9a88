"""Labels as they settle, through faults: 5,000 documents pushed to a Redis Stream, read
by ``shiftdown ingest`` (killed with SIGKILL and started again mid-stream) while Redis
itself restarts (on its append-only file); ``shiftdown results --follow`` and the Redis
results stream both deliver every label, and the store holds each document once, with
one final label."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select

import migrations
from bench.results_reader import ResultsReader
from bench.services import RedisServer, have_binary
from bench.tiny_model import write_tiny_gguf
from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.results import FINAL
from shiftdown.schema import Document
from tests.helpers import counts, free_port, start_module, stop
from tests.stack import Stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(not have_binary("redis-server"), reason="needs redis-server"),
]

N = 5000


def _settled(run_id: int) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    Document.run_id == run_id, Document.state.in_([s.value for s in FINAL])
                )
            )
            or 0
        )


def _stored(run_id: int) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Document.run_id == run_id)) or 0)


def _wait_until(check: object, timeout_s: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_every_label_reaches_both_ways_out_through_a_kill_and_a_redis_restart(
    stack: Stack, tmp_path: Path
) -> None:
    server = RedisServer(stack.folder, free_port(), appendonly=True).start()
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    env = stack.use(
        SHIFTDOWN_BROKER_URL=server.url(0),
        SHIFTDOWN_RESULTS_STREAM="results",
        SHIFTDOWN_MODEL_PATH=str(model),
        # The tiny model's random weights spread their probability: some kept, most not.
        SHIFTDOWN_THRESHOLD="0.02",
        SHIFTDOWN_PARALLEL="32",
        SHIFTDOWN_SLM_BATCH_SIZE="32",
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="10",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
        SHIFTDOWN_RECONCILE_INTERVAL_S="2",
        SHIFTDOWN_RECONCILE_AFTER_S="10",
    )
    migrations.upgrade(env["SHIFTDOWN_DATABASE_URL"])
    log = stack.log.open("ab")
    worker: subprocess.Popen[bytes] | None = None
    ingest_args = ["cli", "ingest", "--stream", "incoming", "--consumer", "c1"]
    ingest_args += ["--taxonomy", str(stack.taxonomy), "--task", "streamed"]

    def start_ingest() -> subprocess.Popen[bytes]:
        return start_module(ingest_args, env, log)

    client = redis.Redis.from_url(server.url(0))
    consumer = ResultsReader(server.url(0), "results")
    follower: subprocess.Popen[bytes] | None = None
    ingest = start_ingest()
    try:
        worker = stack.worker(env, processes=2)
        texts = [row["text"] for row in stack.banking]

        def push(lo: int, hi: int) -> None:
            for start in range(lo, hi, 250):
                pipe = client.pipeline()
                for i in range(start, min(hi, start + 250)):
                    pipe.xadd("incoming", {"id": f"s{i}", "text": texts[i % len(texts)]})
                pipe.execute()
                time.sleep(0.1)

        push(0, 1500)
        _wait_until(lambda: _stored(1) > 0, 60, "the run's first document")
        out = tmp_path / "labels.jsonl"
        follower = start_module(
            ["cli", "results", "1", "--follow", "--format", "jsonl", "--out", str(out)], env, log
        )
        _wait_until(lambda: _stored(1) >= 700, 60, "700 documents stored")
        stop(ingest, signal.SIGKILL)  # mid-stream: what it read and did not ack is pending
        push(1500, 3000)
        ingest = start_ingest()
        _wait_until(lambda: _stored(1) >= 2500, 120, "2,500 documents stored")
        server.stop()  # a restart, on the append-only file
        time.sleep(1)
        server.start()
        push(3000, N)
        _wait_until(lambda: _settled(1) == N, 300, "every document settled")
        assert CliRunner().invoke(cli, ["close", "1"]).exit_code == 0
        assert follower.wait(60) == 0
        _wait_until(lambda: len(set(consumer.seen)) >= N, 60, "the results stream")
    finally:
        consumer.stop()
        for proc in (ingest, worker, follower):
            if proc is not None and proc.poll() is None:
                stop(proc)
        server.kill()
    c = counts(1)
    assert c["documents"] == N and c["duplicates"] == 0, c  # nothing lost, nothing twice
    assert c["labelled"] == N, c  # every document has its one final label
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with session_scope() as session:
        ids = set(session.scalars(select(Document.id).where(Document.run_id == 1)))
    assert len(rows) == N and {r["document_id"] for r in rows} == ids  # each once
    assert all(r["label"] for r in rows)
    assert set(consumer.seen) == ids  # every label reached the stream (a few twice, perhaps)
