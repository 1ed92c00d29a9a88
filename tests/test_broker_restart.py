"""The broker restarts mid-run (``pytest -m faults``), on a Redis server of the test's
own: with its append-only file nothing is lost; without persistence the queued tasks
are gone, and ``shiftdown reconcile`` finds their documents and finishes them. Either
way no prediction is written twice."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.helpers import counts, figures, free_port, stop
from tests.stack import Stack

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

N = 128


def start_redis(port: int, folder: Path, aof: bool) -> subprocess.Popen[bytes]:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", "always"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


@pytest.mark.parametrize("aof", [True, False], ids=["append-only-file", "no-persistence"])
def test_a_broker_restart_loses_nothing(aof: bool, stack: Stack) -> None:
    port = free_port()
    server = start_redis(port, stack.folder, aof)
    env = stack.use(
        SHIFTDOWN_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        SHIFTDOWN_VISIBILITY_TIMEOUT_S="5",
        SHIFTDOWN_RESTORE_INTERVAL_S="1",
    )
    worker = stack.worker(env)
    try:
        run_id = stack.submit(N, "r")
        stack.wait_for(run_id, 0.3, N)
        stop(server, signal.SIGKILL)
        time.sleep(2)
        server = start_redis(port, stack.folder, aof)
        if not aof:
            # The queue came back empty: what was waiting is only in Postgres now.
            time.sleep(8)  # let the worker reconnect and finish the batch it held
            found = CliRunner().invoke(cli, ["reconcile", str(run_id), "--min-age", "0"])
            assert found.exit_code == 0, found.output
            assert "sent" in found.output and " 0 to the SLM" not in found.output, found.output
        stack.settle(run_id)
    finally:
        stop(worker)
        stop(server, signal.SIGKILL)
    calls_made = len(stack.scripted.requests)
    name = "AOF" if aof else "no persistence + reconcile"
    figures(f"Redis restart, {name}", N, run_id, calls_made)
    c = counts(run_id)
    assert c["documents"] == N and c["labelled"] == N, c  # nothing lost
    assert c["duplicates"] == 0 and c["stages"]["slm"] == N, c  # nothing written twice
    assert 0 <= calls_made - c["frontier_calls"] <= 1
