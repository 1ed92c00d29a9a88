"""Fault tests with real processes (``pytest -m faults``): a worker killed mid-run, shut
down warm mid-batch, or recycled loses nothing and duplicates nothing; frontier faults
retry through Celery with countdowns."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Document, FrontierCall, Prediction
from tests.helpers import celery_worker, counts, stop
from tests.scripted_server import ScriptedServer
from workers.broker import in_flight

pytestmark = pytest.mark.faults


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return celery_worker("slm,frontier", env, log.open("ab"), "-c", "1", "-l", "info")


def unsettled(run_id: int) -> list[tuple[object, ...]]:
    """Documents still waiting for a stage, with what the store knows of them."""
    with session_scope() as s:
        return [
            tuple(row)
            for row in s.execute(
                select(Document.id, Document.state, Document.frontier_lease_until).where(
                    Document.run_id == run_id, Document.state.in_(["queued", "escalated"])
                )
            )
        ]


def slm_done(run_id: int) -> int:
    with session_scope() as s:
        return int(
            s.scalar(
                select(func.count()).where(Prediction.run_id == run_id, Prediction.stage == "slm")
            )
            or 0
        )


def test_kill_9_mid_run_loses_and_duplicates_nothing(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_THRESHOLD": "0.5",
        "SHIFTDOWN_N_THREADS": "2",
        # Unacknowledged messages of a dead worker come back after this long.
        "SHIFTDOWN_VISIBILITY_TIMEOUT_S": "5",
        "OPENAI_BASE_URL": scripted.base_url,
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",  # a killed call's lease runs out in 35 s
    }
    use_settings(**env)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    n = 320
    docs = write_jsonl(
        [{"id": f"k{i}", "text": banking[i % len(banking)]["text"]} for i in range(n)]
    )
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    result = runner.invoke(cli, ["submit", str(docs), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output
    run_id = int(result.stdout.strip())

    deadline = time.monotonic() + 120
    while slm_done(run_id) < 0.3 * n and time.monotonic() < deadline:
        time.sleep(0.2)
    killed_at = slm_done(run_id)
    stop(worker, signal.SIGKILL)
    assert 0 < killed_at < n

    time.sleep(6)  # past the visibility timeout
    worker = start_worker(env, log)
    try:
        waited = runner.invoke(cli, ["wait", str(run_id), "--timeout", "240"])
        assert waited.exit_code == 0, (
            f"{waited.output}{counts(run_id)}\n{unsettled(run_id)}\n"
            f"on the broker: {sorted(in_flight(['slm', 'frontier']))}\n"
            + log.read_text(errors="replace")[-3000:]
        )
    finally:
        stop(worker)
    c = counts(run_id)
    assert c["documents"] == n and c["labelled"] == n, c  # nothing lost
    assert c["duplicates"] == 0 and c["stages"]["slm"] == n  # nothing written twice
    assert c["frontier_calls"] == c["stages"].get("frontier", 0)
    # A frontier call in flight at the kill is made again on redelivery and only the second
    # is recorded: at most one call (one process) can go unrecorded.
    assert 0 <= len(scripted.requests) - c["frontier_calls"] <= 1


def _run_with(
    env: dict[str, str], docs: Path, taxonomy: Path, log: Path, fault: Callable[[int], None]
) -> int:
    """Submit, let the worker get going, apply ``fault``, and wait for every document."""
    use = CliRunner()
    assert use.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = use.invoke(cli, ["submit", str(docs), "--taxonomy", str(taxonomy)])
    assert result.exit_code == 0, result.output
    run_id = int(result.stdout.strip())
    fault(run_id)
    waited = use.invoke(cli, ["wait", str(run_id), "--timeout", "240"])
    assert waited.exit_code == 0, waited.output + log.read_text(errors="replace")[-3000:]
    return run_id


def test_warm_shutdown_mid_batch_loses_and_duplicates_nothing(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_N_THREADS": "2",
        "OPENAI_BASE_URL": scripted.base_url,
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",  # a killed call's lease runs out in 35 s
    }
    use_settings(**env)
    n = 160
    docs = write_jsonl(
        [{"id": f"w{i}", "text": banking[i % len(banking)]["text"]} for i in range(n)]
    )
    log = tmp_path / "worker.log"
    workers = [start_worker(env, log)]

    def sigterm_mid_batch(run_id: int) -> None:
        deadline = time.monotonic() + 120
        while slm_done(run_id) < 0.2 * n and time.monotonic() < deadline:
            time.sleep(0.2)
        # SIGTERM to the main process only: Celery's warm shutdown finishes the batch in
        # hand, acknowledges it, and exits; the rest stays queued for the next worker.
        workers[0].send_signal(signal.SIGTERM)
        workers[0].wait(timeout=120)
        assert slm_done(run_id) < n
        workers.append(start_worker(env, log))

    try:
        run_id = _run_with(env, docs, banking_taxonomy, log, sigterm_mid_batch)
    finally:
        stop(workers[-1])
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    assert c["frontier_calls"] == len(scripted.requests)


def test_worker_recycling_loses_and_duplicates_nothing(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_N_THREADS": "2",
        "SHIFTDOWN_WORKER_MAX_TASKS_PER_CHILD": "2",
        "OPENAI_BASE_URL": scripted.base_url,
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",  # a killed call's lease runs out in 35 s
    }
    use_settings(**env)
    n = 128
    docs = write_jsonl(
        [{"id": f"c{i}", "text": banking[i % len(banking)]["text"]} for i in range(n)]
    )
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        run_id = _run_with(env, docs, banking_taxonomy, log, lambda _: None)
    finally:
        stop(worker)
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    # Every second task ran in a fresh process, which loaded the model again.
    assert log.read_text(errors="replace").count("loaded ") >= 3


def test_frontier_faults_through_celery_retry_with_countdowns_and_bill_each_attempt_once(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_N_THREADS": "2",
        "SHIFTDOWN_THRESHOLD": "1.0",  # both documents escalate
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "1",
        "SHIFTDOWN_FRONTIER_RETRY_BASE_S": "0.5",
        "OPENAI_BASE_URL": scripted.base_url,
    }
    use_settings(**env)
    slow_text, other_text = banking[0]["text"], banking[1]["text"]
    seen: dict[str, int] = {}

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        seen[user] = seen.get(user, 0) + 1
        if user == slow_text and seen[user] == 1:
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "5"}
        if user == slow_text and seen[user] == 2:
            time.sleep(3)  # past the client's 1 s read timeout
        return scripted.default_answer(body)

    scripted.script.extend([answer] * 10)
    docs = write_jsonl([{"id": "a", "text": slow_text}, {"id": "b", "text": other_text}])
    log = tmp_path / "worker.log"
    # One process: a 5 s Retry-After must not hold it while document b waits.
    worker = celery_worker("slm,frontier", env, log.open("ab"), "-c", "1", "-l", "info")
    try:
        run_id = _run_with(env, docs, banking_taxonomy, log, lambda _: None)
    finally:
        stop(worker)
    with session_scope() as s:
        rows = s.execute(
            select(Document.external_id, FrontierCall.attempt, FrontierCall.status,
                   FrontierCall.http_status, FrontierCall.created_at)
            .join(Document, Document.id == FrontierCall.document_id)
            .order_by(Document.external_id, FrontierCall.attempt)
        ).all()  # fmt: skip
    calls = [(ext, attempt, status, http) for ext, attempt, status, http, _ in rows]
    assert calls == [
        ("a", 1, "retryable", 429),
        ("a", 2, "retryable", None),  # the read timeout
        ("a", 3, "ok", None),
        ("b", 1, "ok", None),
    ], calls
    at = {(ext, attempt): created for ext, attempt, _, _, created in rows}
    assert at[("b", 1)] < at[("a", 2)]  # b went ahead during a's countdown
    assert (at[("a", 2)] - at[("a", 1)]).total_seconds() >= 4.5  # Retry-After honoured
    assert len(scripted.requests) == 4
    c = counts(run_id)
    assert c["labelled"] == 2 and c["frontier_calls"] == 4 and c["duplicates"] == 0, c
