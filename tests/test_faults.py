"""Fault tests with real processes (``pytest -m faults``): a worker killed mid-run, shut
down warm mid-batch, recycled, or cut off from Postgres for 20 s loses nothing and
duplicates nothing; a task that outlives the broker's visibility timeout is delivered
twice and billed once."""

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
from shiftdown.schema import Prediction
from tests.helpers import celery_worker, counts, stop
from tests.scripted_server import ScriptedServer
from tests.tcp_proxy import TcpProxy
from workers.app import TASK_FRONTIER

pytestmark = pytest.mark.faults


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return celery_worker("slm,frontier", env, log.open("ab"), "-c", "1", "-l", "info")


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
        assert waited.exit_code == 0, waited.output + log.read_text(errors="replace")[-3000:]
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


def test_a_task_that_outlives_the_visibility_timeout_is_billed_once(
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
        "SHIFTDOWN_N_THREADS": "1",
        "SHIFTDOWN_THRESHOLD": "1.0",  # the document escalates
        # The broker hands the unacknowledged task to another process after 2 s...
        "SHIFTDOWN_VISIBILITY_TIMEOUT_S": "2",
        "OPENAI_BASE_URL": scripted.base_url,
    }
    use_settings(**env)

    def slow(body: dict[str, Any]) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        time.sleep(10)  # ...while the first frontier call is still in flight
        return scripted.default_answer(body)

    scripted.script.append(slow)
    docs = write_jsonl([{"id": "slow", "text": banking[0]["text"]}])
    log = tmp_path / "worker.log"
    worker = celery_worker("slm,frontier", env, log.open("ab"), "-c", "2", "-l", "info")
    try:
        run_id = _run_with(env, docs, banking_taxonomy, log, lambda _: None)
    finally:
        stop(worker)
    text = log.read_text(errors="replace")
    # Delivered twice; the second delivery saw the lease of the first and did nothing.
    assert text.count(f"{TASK_FRONTIER}[") >= 2 and "already in flight" in text, text[-3000:]
    c = counts(run_id)
    assert c["labelled"] == 1 and c["stages"] == {"slm": 1, "frontier": 1}, c
    assert c["frontier_calls"] == 1 == len(scripted.requests), c


def test_postgres_unavailable_for_20_s_mid_run_loses_and_duplicates_nothing(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # The worker reaches Postgres through a proxy the test cuts; the test itself does not.
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_N_THREADS": "2",
        "OPENAI_BASE_URL": scripted.base_url,
    }
    worker_env = {**env, "SHIFTDOWN_DATABASE_URL": pg_url.replace(":5432/", f":{proxy.port}/")}
    assert worker_env["SHIFTDOWN_DATABASE_URL"] != pg_url
    use_settings(**env)
    n = 200
    docs = write_jsonl(
        [{"id": f"p{i}", "text": banking[i % len(banking)]["text"]} for i in range(n)]
    )
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env, log)

    def outage(run_id: int) -> None:
        deadline = time.monotonic() + 120
        while slm_done(run_id) < 0.3 * n and time.monotonic() < deadline:
            time.sleep(0.2)
        proxy.cut()
        time.sleep(20)
        assert slm_done(run_id) < n
        proxy.restore()

    try:
        run_id = _run_with(env, docs, banking_taxonomy, log, outage)
    finally:
        stop(worker)
        proxy.cut()
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    # Retried, not lost: the log shows the database errors the tasks retried through.
    assert "OperationalError" in log.read_text(errors="replace")
    assert 0 <= len(scripted.requests) - c["frontier_calls"] <= 1
