"""Fault tests with real processes (``pytest -m faults``): a worker killed mid-run, shut
down warm mid-batch, or recycled loses nothing and duplicates nothing; a task that
outlives the visibility timeout is billed once; frontier faults retry through Celery
with countdowns."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from sqlalchemy import select

from shiftdown.db import session_scope
from shiftdown.schema import Document, FrontierCall
from tests.helpers import counts, figures, slm_done, stop
from tests.stack import Stack
from workers.app import TASK_FRONTIER

pytestmark = pytest.mark.faults

KILL_N = 2_000


def test_kill_9_mid_run_loses_and_duplicates_nothing(stack: Stack) -> None:
    env = stack.use(
        # Unacknowledged messages of a dead worker come back after 5 s.
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="5",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
        # Delivery, not the model, is under test: documents cut to their first 32
        # characters keep 2,000 of them near two and a half minutes of inference here.
        SHIFTDOWN_MAX_TEXT_CHARS="32",
        SHIFTDOWN_THRESHOLD="0.3",
    )
    worker = stack.worker(env)
    run_id = stack.submit(KILL_N, "k")
    killed_at = stack.wait_for(run_id, 0.3, KILL_N)
    stop(worker, signal.SIGKILL)
    assert 0 < killed_at < KILL_N

    worker = stack.worker(env)
    try:
        stack.settle(run_id, timeout_s=400)
    finally:
        stop(worker)
    calls_made = len(stack.scripted.requests)
    figures("kill -9", KILL_N, run_id, calls_made)
    c = counts(run_id)
    assert c["documents"] == KILL_N and c["labelled"] == KILL_N, c  # nothing lost
    assert c["duplicates"] == 0 and c["stages"]["slm"] == KILL_N  # nothing written twice
    assert c["frontier_calls"] == c["stages"].get("frontier", 0) > 0
    # A frontier call in flight at the kill is made again on redelivery and only the second
    # is recorded: at most one call (one process) can go unrecorded.
    assert 0 <= calls_made - c["frontier_calls"] <= 1


def test_warm_shutdown_mid_batch_loses_and_duplicates_nothing(stack: Stack) -> None:
    env = stack.use()
    n = 96
    worker = stack.worker(env)
    try:
        run_id = stack.submit(n, "w")
        stack.wait_for(run_id, 0.2, n)
        # SIGTERM to the main process only: Celery's warm shutdown finishes the batch in
        # hand, acknowledges it, and exits; the rest stays queued for the next worker.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        assert slm_done(run_id) < n
        worker = stack.worker(env)
        stack.settle(run_id)
    finally:
        stop(worker)
    figures("warm shutdown", n, run_id, len(stack.scripted.requests))
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    assert c["frontier_calls"] == len(stack.scripted.requests)


def test_worker_recycling_loses_and_duplicates_nothing(stack: Stack) -> None:
    # Frontier tasks count too: few escalations keep the reloads (seconds each) few.
    env = stack.use(SHIFTDOWN_WORKER_MAX_TASKS_PER_CHILD="2", SHIFTDOWN_THRESHOLD="0.2")
    n = 96
    worker = stack.worker(env)
    try:
        run_id = stack.submit(n, "c")
        stack.settle(run_id)
    finally:
        stop(worker)
    figures("recycling", n, run_id)
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    # Every second task ran in a fresh process, which loaded the model again.
    assert stack.log.read_text(errors="replace").count("loaded ") >= 3


def test_a_task_that_outlives_the_visibility_timeout_is_billed_once(stack: Stack) -> None:
    env = stack.use(
        SHIFTDOWN_N_THREADS="1",
        SHIFTDOWN_THRESHOLD="1.0",  # the document escalates
        # The broker hands the unacknowledged task to the other process after 2 s...
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="2",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
        SHIFTDOWN_FRONTIER_TIMEOUT_S="30",
    )
    scripted = stack.scripted

    def slow(body: dict[str, Any]) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        time.sleep(10)  # ...while the first frontier call is still in flight
        return scripted.default_answer(body)

    scripted.script.append(slow)
    worker = stack.worker(env, processes=2)
    try:
        run_id = stack.submit(1, "slow")
        stack.settle(run_id, timeout_s=120)
    finally:
        stop(worker)
    figures("visibility timeout", 1, run_id, len(scripted.requests))
    text = stack.log.read_text(errors="replace")
    # Delivered at least twice; a later delivery saw the first one's lease and did nothing.
    assert text.count(f"{TASK_FRONTIER}[") >= 2 and "already in flight" in text, text[-3000:]
    c = counts(run_id)
    assert c["labelled"] == 1 and c["stages"] == {"slm": 1, "frontier": 1}, c
    assert c["frontier_calls"] == 1 == len(scripted.requests), c


def test_frontier_faults_through_celery_retry_with_countdowns_and_bill_each_attempt_once(
    stack: Stack,
) -> None:
    env = stack.use(
        SHIFTDOWN_THRESHOLD="1.0",  # both documents escalate
        SHIFTDOWN_FRONTIER_TIMEOUT_S="1",
        SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.5",
    )
    scripted = stack.scripted
    slow_text = stack.banking[0]["text"]
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
    # One process: a 5 s Retry-After must not hold it while the other document waits.
    worker = stack.worker(env)
    try:
        run_id = stack.submit(2, "f")  # f0 gets the faults, f1 goes through
        stack.settle(run_id)
    finally:
        stop(worker)
    figures("frontier faults through Celery", 2, run_id, len(scripted.requests))
    with session_scope() as s:
        rows = s.execute(
            select(Document.external_id, FrontierCall.attempt, FrontierCall.status,
                   FrontierCall.http_status, FrontierCall.created_at)
            .join(Document, Document.id == FrontierCall.document_id)
            .order_by(Document.external_id, FrontierCall.attempt)
        ).all()  # fmt: skip
    calls = [(ext, attempt, status, http) for ext, attempt, status, http, _ in rows]
    assert calls == [
        ("f0", 1, "retryable", 429),
        ("f0", 2, "retryable", None),  # the read timeout
        ("f0", 3, "ok", None),
        ("f1", 1, "ok", None),
    ], calls
    at = {(ext, attempt): created for ext, attempt, _, _, created in rows}
    assert at[("f1", 1)] < at[("f0", 2)]  # f1 went ahead during f0's countdown
    assert (at[("f0", 2)] - at[("f0", 1)]).total_seconds() >= 4.5  # Retry-After honoured
    assert len(scripted.requests) == 4
    c = counts(run_id)
    assert c["labelled"] == 2 and c["frontier_calls"] == 4 and c["duplicates"] == 0, c
