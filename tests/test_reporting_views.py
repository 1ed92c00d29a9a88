"""The SQL reporting views agree with the report and with the rows they summarise, on
SQLite and on Postgres."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Prediction


@pytest.mark.parametrize("store", ["sqlite_url", "pg_url"])
def test_views_match_the_report(
    store: str,
    request: pytest.FixtureRequest,
    use_settings: Callable[..., None],
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    write_jsonl: Callable[..., Path],
) -> None:
    url = request.getfixturevalue(store)
    use_settings(
        SHIFTDOWN_DATABASE_URL=url, SHIFTDOWN_THRESHOLD="0.5", OPENAI_BASE_URL=scripted.base_url
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    docs = write_jsonl([{"text": r["text"]} for r in banking[:30]])
    assert (
        runner.invoke(cli, ["run", str(docs), "--taxonomy", str(banking_taxonomy)]).exit_code == 0
    )
    report = json.loads(runner.invoke(cli, ["report", "1", "--format", "json"]).stdout)
    escalated = report["escalated"]
    assert 0 < escalated < 30

    with session_scope() as s:
        q = lambda sql: s.execute(text(sql)).mappings().all()  # noqa: E731
        summary = q("SELECT * FROM run_summary WHERE run_id = 1")[0]
        by_label = q("SELECT * FROM escalation_by_label WHERE run_id = 1")
        by_day = q("SELECT * FROM frontier_cost_by_day")
        per_minute = q("SELECT * FROM throughput_per_minute WHERE run_id = 1")
        agreement = q("SELECT * FROM slm_frontier_agreement WHERE run_id = 1")[0]
        percentiles = {
            r["stage"]: r for r in q("SELECT * FROM latency_percentiles WHERE run_id = 1")
        }
        by_day_esc = q("SELECT * FROM escalation_by_day")
        latencies = sorted(
            s.scalars(select(Prediction.latency_ms).where(Prediction.stage == "slm")).all()
        )
        predictions = s.execute(
            select(Prediction.document_id, Prediction.stage, Prediction.label)
        ).all()

    assert summary["documents"] == 30 and summary["rejected"] == 0
    assert summary["final_slm"] == 30 - escalated and summary["final_frontier"] == escalated
    assert float(summary["frontier_usd"]) == pytest.approx(report["frontier"]["usd"], rel=1e-6)
    assert float(summary["usd_per_1k_documents"]) == pytest.approx(
        report["usd_per_1k_docs"], rel=1e-4
    )
    assert float(summary["all_frontier_usd"]) == pytest.approx(
        report["counterfactual"]["all_frontier_usd"], rel=1e-4
    )

    # Nearest-rank percentiles: the smallest value with at least p of the values at or below it.
    assert percentiles["slm"]["documents"] == 30
    assert percentiles["slm"]["p50_ms"] == pytest.approx(latencies[14])
    assert percentiles["slm"]["p95_ms"] == pytest.approx(latencies[28])
    assert percentiles["slm"]["max_ms"] == pytest.approx(latencies[-1])
    assert percentiles["frontier"]["documents"] == escalated
    assert sum(r["documents"] for r in by_day_esc) == 30
    assert sum(r["escalated"] for r in by_day_esc) == escalated
    assert float(summary["docs_per_s"]) == pytest.approx(report["docs_per_s"], rel=0.05)

    assert sum(r["documents"] for r in by_label) == 30
    assert sum(r["escalated"] for r in by_label) == escalated
    assert sum(r["calls"] for r in by_day) == escalated == sum(r["ok_calls"] for r in by_day)
    assert float(sum(r["usd"] for r in by_day)) == pytest.approx(
        report["frontier"]["usd"], rel=1e-6
    )
    assert sum(r["predictions"] for r in per_minute if r["stage"] == "slm") == 30

    slm = {d: lbl for d, st, lbl in predictions if st == "slm"}
    frontier = {d: lbl for d, st, lbl in predictions if st == "frontier"}
    agreed = sum(slm[d] == lbl for d, lbl in frontier.items())
    assert agreement["documents_seen_by_both"] == escalated and agreement["agreed"] == agreed
    assert float(agreement["agreement"]) == pytest.approx(agreed / escalated)


def test_metrics_endpoint_is_scraped(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    write_jsonl: Callable[..., Path],
) -> None:
    import socket
    import urllib.request

    from prometheus_client import start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    from cli.metrics import registry

    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="0.5",
        OPENAI_BASE_URL=scripted.base_url,
        SHIFTDOWN_FRONTIER_MODEL="gpt-4o",
    )
    docs = write_jsonl([{"text": r["text"]} for r in banking[:20]])
    assert (
        CliRunner().invoke(cli, ["run", str(docs), "--taxonomy", str(banking_taxonomy)]).exit_code
        == 0
    )
    report = json.loads(CliRunner().invoke(cli, ["report", "--format", "json"]).stdout)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry())
    try:
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    finally:
        server.shutdown()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("shiftdown_predictions_total", (("stage", "slm"),))] == 20
    assert samples[("shiftdown_escalations_total", (("task", "default"),))] == report["escalated"]
    frontier = report["frontier"]
    assert (
        samples[("shiftdown_frontier_calls_total", (("model", "gpt-4o"), ("status", "ok")))]
        == frontier["calls"]
    )
    assert samples[("shiftdown_frontier_usd_total", (("model", "gpt-4o"),))] == pytest.approx(
        frontier["usd"]
    )
    assert samples[("shiftdown_stage_latency_ms_count", (("stage", "slm"),))] == 20
    assert samples[("shiftdown_documents", (("state", "classified"), ("task", "default")))] == 20
    assert samples[("shiftdown_queue_depth", (("queue", "slm"),))] == 0
