"""Batch mode under a kill (``pytest -m faults``): the worker that sent a batch is
killed with SIGKILL while the batch is in progress at the provider; a new worker
collects it. Every document ends with exactly one final label, no batch is created twice
and every line the provider answered (and billed) is recorded once."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import func, select

from shiftdown.db import session_scope
from shiftdown.schema import FrontierBatch, FrontierCall
from tests.helpers import counts, stop
from tests.stack import Stack

pytestmark = pytest.mark.faults

N = 48


def test_a_worker_killed_mid_batch_leaves_one_label_each_and_nothing_billed_twice(
    stack: Stack,
) -> None:
    env = stack.use(
        SHIFTDOWN_FRONTIER_MODE="batch",
        SHIFTDOWN_THRESHOLD="1.0",  # every document escalates
        SHIFTDOWN_FRONTIER_TOP_K="5",
        SHIFTDOWN_FRONTIER_BATCH_WAIT_S="2",
        SHIFTDOWN_FRONTIER_BATCH_POLL_S="1",
        # The SLM tasks the killed worker held come back after 5 s.
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="5",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
    )
    api = stack.scripted.batch
    assert api is not None
    api.polls_until_done = 10**9  # in progress until the test lets it end
    worker = stack.worker(env)
    try:
        run_id = stack.submit(N, "k")
        deadline = time.monotonic() + 120
        while api.created == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.created >= 1, stack.log.read_text(errors="replace")[-3000:]
        stop(worker, signal.SIGKILL)
        api.polls_until_done = 0
        worker = stack.worker(env)
        stack.settle(run_id, timeout_s=180)
    finally:
        stop(worker)
    c = counts(run_id)
    assert c["documents"] == N and c["labelled"] == N and c["duplicates"] == 0, c
    with session_scope() as s:
        batches = s.scalar(select(func.count()).select_from(FrontierBatch))
        ok = s.scalar(select(func.count()).where(FrontierCall.status == "ok"))
        per_line = s.execute(
            select(FrontierCall.document_id, FrontierCall.batch_id)
            .group_by(FrontierCall.document_id, FrontierCall.batch_id)
            .having(func.count() > 1)
        ).all()
    assert batches == api.created  # none created twice
    assert ok == len(api.billed)  # every billed line recorded, once
    assert per_line == []
    print(
        f"\nFIGURES batch mode, kill -9 mid-batch: submitted {N}, labelled {c['labelled']}, "
        f"batches {batches}, lines billed {len(api.billed)}, recorded {ok}"
    )
