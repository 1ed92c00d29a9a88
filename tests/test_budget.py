"""Frontier budget caps: past a run's (or the trailing hour's) dollar limit, escalations
are parked with the reason instead of billed; raising the cap and escalating the
pending documents finishes them, with no call made twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Document
from tests.helpers import counts

# The scripted server bills 120 prompt + 7 completion tokens: $0.00037 at gpt-4o prices.
CALL_USD = 120 * 2.5e-6 + 7 * 10e-6


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.faults
@pytest.mark.parametrize("cap", ["RUN", "HOUR"])
def test_a_budget_cap_parks_escalations_until_it_is_raised(
    cap: str,
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    scripted: ScriptedServer,
) -> None:
    env = {
        "SHIFTDOWN_DATABASE_URL": sqlite_url,
        "OPENAI_BASE_URL": scripted.base_url,
        "SHIFTDOWN_THRESHOLD": "1.0",  # everything escalates
    }
    use_settings(**env, **{f"SHIFTDOWN_FRONTIER_BUDGET_USD_PER_{cap}": str(2.5 * CALL_USD)})
    docs = write_jsonl([{"id": str(i), "text": r["text"]} for i, r in enumerate(banking[:10])])
    invoke("run", str(docs), "--taxonomy", str(banking_taxonomy))

    # The cap is checked before each call: two calls stay under it, the third crosses it.
    c = counts(1)
    assert c["frontier_calls"] == 3 and len(scripted.requests) == 3, c
    assert c["states"] == {"classified": 3, "awaiting_frontier": 7}, c
    report = json.loads(invoke("report", "1", "--format", "json").stdout)
    ((reason, parked),) = report["parked"].items()
    assert parked == 7 and reason.startswith("budget:") and f"PER_{cap}" in reason
    assert report["frontier"]["usd"] == pytest.approx(3 * CALL_USD)
    assert "budget:" in invoke("report", "1").stdout

    # Raise the cap: the parked documents finish, each billed exactly once.
    use_settings(**env, **{f"SHIFTDOWN_FRONTIER_BUDGET_USD_PER_{cap}": "1.0"})
    assert "7" in invoke("escalate", "--pending").stdout
    c = counts(1)
    assert c["states"] == {"classified": 10} and c["labelled"] == 10, c
    assert c["frontier_calls"] == 10 == len(scripted.requests) and c["duplicates"] == 0
    with session_scope() as s:
        assert s.scalars(select(Document.error).where(Document.error.is_not(None))).all() == []
