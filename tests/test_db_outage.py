"""Postgres goes away for 20 s mid-run (``pytest -m faults``): the workers' tasks fail
on the database, retry with backoff through the broker, and finish once it returns;
nothing is lost and nothing written twice."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from bench.tcp_proxy import TcpProxy
from tests.helpers import counts, figures, slm_done, stop
from tests.stack import Stack

pytestmark = pytest.mark.faults

OUTAGE_S = 20


def test_postgres_unavailable_for_20_s_mid_run_loses_and_duplicates_nothing(stack: Stack) -> None:
    # The worker reaches Postgres through a proxy the test cuts; the test itself does not.
    env = stack.use()
    pg_url = env["SHIFTDOWN_DATABASE_URL"]
    port = urlsplit(pg_url).port or 5432
    proxy = TcpProxy(("127.0.0.1", port)).start()
    through_proxy = pg_url.replace(f":{port}/", f":{proxy.port}/")
    assert through_proxy != pg_url
    n = 160
    worker = stack.worker({**env, "SHIFTDOWN_DATABASE_URL": through_proxy})
    try:
        run_id = stack.submit(n, "p")
        stack.wait_for(run_id, 0.3, n)
        proxy.cut()
        cut_at = slm_done(run_id)
        time.sleep(OUTAGE_S)
        # Nothing reached the store while it was away.
        assert slm_done(run_id) == cut_at < n
        proxy.restore()
        stack.settle(run_id)
    finally:
        stop(worker)
        proxy.cut()
    calls_made = len(stack.scripted.requests)
    figures("Postgres away 20 s", n, run_id, calls_made)
    c = counts(run_id)
    assert c["labelled"] == n and c["duplicates"] == 0 and c["stages"]["slm"] == n, c
    text = stack.log.read_text(errors="replace")
    # Met, and ridden out: tasks retried through the broker on the database's errors, or
    # a frontier answer already paid for waited in its process for the store to return
    # (workers/frontier.py), holding the one worker process for the whole outage.
    retried = "OperationalError" in text and "Retry in" in text
    waited = "recording the frontier answer for document" in text
    assert retried or waited, text[-3000:]
    # A frontier call whose answer could not be recorded is made again: one per process.
    assert 0 <= calls_made - c["frontier_calls"] <= 1
