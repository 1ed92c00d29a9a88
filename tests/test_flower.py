"""Flower shows both queues' workers and their tasks while a run is in flight, behind
basic auth."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.helpers import celery_worker, free_port, start_module, stop


def test_flower_refuses_to_run_without_a_password(use_settings: Callable[..., None]) -> None:
    use_settings()
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code != 0 and "SHIFTDOWN_FLOWER_PASSWORD" in result.output


def _get(url: str, auth: str | None) -> Any:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_flower_api_sees_workers_and_tasks(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_N_THREADS": "2",
    }
    use_settings(**env)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    port = free_port()
    log = (tmp_path / "procs.log").open("wb")
    procs = [
        celery_worker("slm", env, log, "-n", "slm@%h", "-c", "1"),
        celery_worker("frontier", env, log, "-n", "frontier@%h", "-P", "threads", "-c", "4"),
        start_module(
            ["cli", "flower", "--port", str(port), "--address", "127.0.0.1"],
            {**env, "SHIFTDOWN_FLOWER_USER": "ops", "SHIFTDOWN_FLOWER_PASSWORD": "s3cret"},
            log,
        ),
    ]
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline and len(workers) < 2:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):  # still starting
                workers = _get(f"{api}/workers?refresh=1", "ops:s3cret")
            time.sleep(1)
        assert {name.split("@")[0] for name in workers} == {"slm", "frontier"}, workers
        queues = {
            name.split("@")[0]: [q["name"] for q in info.get("active_queues", [])]
            for name, info in workers.items()
        }
        assert queues == {"slm": ["slm"], "frontier": ["frontier"]}

        docs = write_jsonl([{"text": r["text"]} for r in banking[:96]])
        assert (
            runner.invoke(cli, ["submit", str(docs), "--taxonomy", str(banking_taxonomy)]).exit_code
            == 0
        )
        deadline = time.monotonic() + 60
        tasks: dict[str, Any] = {}
        while time.monotonic() < deadline and not tasks:
            tasks = _get(f"{api}/tasks?limit=50", "ops:s3cret")
            time.sleep(1)
        assert tasks and {t["name"] for t in tasks.values()} == {"shiftdown.slm.classify_batch"}

        with pytest.raises(urllib.error.HTTPError) as denied:
            _get(f"{api}/workers", None)
        assert denied.value.code == 401
        # The password reaches Flower through its environment, not its command line.
        assert "s3cret" not in " ".join(procs[2].args)  # type: ignore[arg-type]
    finally:
        for proc in procs:
            stop(proc)
        log.close()
