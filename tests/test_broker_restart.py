"""The broker restarts mid-run (``pytest -m faults``), on a Redis server of the test's
own: with its append-only file nothing is lost; without persistence the queued tasks
are gone, and ``shiftdown reconcile`` finds their documents and finishes them. Either
way no prediction is written twice."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from cli.main import cli
from tests.helpers import celery_worker, counts, free_port, stop
from tests.scripted_server import ScriptedServer
from tests.test_faults import slm_done

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

N = 200


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
def test_a_broker_restart_loses_nothing(
    aof: bool,
    use_settings: Callable[..., None],
    pg_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    port = free_port()
    server = start_redis(port, tmp_path, aof)
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "SHIFTDOWN_N_THREADS": "2",
        "SHIFTDOWN_VISIBILITY_TIMEOUT_S": "5",
        "OPENAI_BASE_URL": scripted.base_url,
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",  # a killed call's lease runs out in 35 s
    }
    use_settings(**env)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    docs = write_jsonl(
        [{"id": f"r{i}", "text": banking[i % len(banking)]["text"]} for i in range(N)]
    )
    log = tmp_path / "worker.log"
    worker = celery_worker("slm,frontier", env, log.open("ab"), "-c", "1", "-l", "info")
    try:
        result = runner.invoke(cli, ["submit", str(docs), "--taxonomy", str(banking_taxonomy)])
        assert result.exit_code == 0, result.output
        run_id = int(result.stdout.strip())
        deadline = time.monotonic() + 120
        while slm_done(run_id) < 0.3 * N and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(server, signal.SIGKILL)
        at_restart = slm_done(run_id)
        assert at_restart < N
        time.sleep(2)
        server = start_redis(port, tmp_path, aof)
        if not aof:
            # The queue came back empty: what was waiting is only in Postgres now.
            time.sleep(8)  # let the worker reconnect and finish the batch it held
            found = runner.invoke(cli, ["reconcile", str(run_id), "--min-age", "0"])
            assert found.exit_code == 0, found.output
            assert "sent" in found.output and " 0 to the SLM" not in found.output, found.output
        waited = runner.invoke(cli, ["wait", str(run_id), "--timeout", "240"])
        assert waited.exit_code == 0, waited.output + log.read_text(errors="replace")[-3000:]
    finally:
        stop(worker)
        stop(server, signal.SIGKILL)
    c = counts(run_id)
    assert c["documents"] == N and c["labelled"] == N, c  # nothing lost
    assert c["duplicates"] == 0 and c["stages"]["slm"] == N, c  # nothing written twice
    assert 0 <= len(scripted.requests) - c["frontier_calls"] <= 1
