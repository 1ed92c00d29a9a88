"""The host-ceiling benchmark's interface (others script against it) and the throwaway
services that benchmarks start on machines that run none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from bench.services import throwaway_services
from tests.conftest import PG_ADMIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_host_ceiling_prints_one_json_object_with_every_line() -> None:
    # Not this process's settings; the servers the suite uses (its own, if it started any).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHIFTDOWN_") or k.startswith(("SHIFTDOWN_TEST_", "SHIFTDOWN_BENCH_"))
    }
    env["SHIFTDOWN_TEST_PG"] = PG_ADMIN
    result = subprocess.run(
        [sys.executable, "-m", "bench.host_ceiling", "--docs", "256", "--threads", "2", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = json.loads(result.stdout)
    for layout in ("", "_streams"):
        # The default (two contexts here) and one context, each layout.
        for name in (f"{line}{layout}{n}" for line in ("classify_many", "pipeline")
                     for n in ("", "_contexts1")):  # fmt: skip
            assert {"docs_per_s", "p50_ms", "p95_ms"} <= set(lines[name])
            assert lines[name]["docs_per_s"] > 0
        # The default path against one context, in the same run.
        default, one = lines[f"classify_many{layout}"], lines[f"classify_many{layout}_contexts1"]
        assert default["x_one_context"] == pytest.approx(
            default["docs_per_s"] / one["docs_per_s"], abs=0.01
        )
    assert lines["classify_many"]["p50_ms"] <= lines["classify_many"]["p95_ms"]


def test_throwaway_services_answer_and_go_away(tmp_path: Path) -> None:
    with throwaway_services(tmp_path) as (pg, broker):
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert redis.Redis.from_url(broker.url(3)).ping()
        # A crash and a restart on the same port and data, as the fault tests need.
        broker.kill()
        broker.start()
        assert redis.Redis.from_url(broker.url(3)).ping()
    assert pg.process is not None and pg.process.poll() is not None
    assert list(tmp_path.iterdir()) == []
