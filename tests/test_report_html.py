"""``shiftdown report --html``: a self-contained page whose charts say what the report's
figures say. Rendered in a real headless Chromium, the page is measured: the cost
chart's two lines end at the report's dollar figures on one dollar axis, the throughput
average sits at the report's rate, each escalation bar is as long as its label's rate.
``--format csv`` for scripts."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.db import session_scope
from tests.chromium_page import CHROMIUM, axis_scale, measure, screenshot
from tests.fake_run import write_fake_run

PIXEL = 1.0


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _check_static(page: str) -> None:
    assert page.count('<svg class="chart"') == 4
    body = page.split("<body>")[1]
    assert "<script" not in page and "http" not in body  # self-contained
    # A summary in words: no Python values printed as they are.
    assert "None" not in body and "[{" not in body and "{'" not in body


def test_html_report_of_a_run_with_frontier_calls(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="0.5",
        OPENAI_BASE_URL=scripted.base_url,
    )
    docs = write_jsonl([{"text": r["text"]} for r in banking[:24]])
    _invoke("run", str(docs), "--taxonomy", str(banking_taxonomy))
    page = tmp_path / "report.html"
    result = _invoke("report", "--format", "csv", "--html", str(page))
    row = next(csv.DictReader(io.StringIO(result.stdout)))
    assert row["documents"] == "24" and float(row["counterfactual.all_frontier_usd"]) > 0
    report = json.loads(_invoke("report", "--format", "json").stdout)
    assert 0 < report["frontier"]["calls"] < 24 and report["projection"] is None
    cf = report["counterfactual"]
    assert cf["so_far_usd"] == cf["all_frontier_usd"]  # every document went through
    html = page.read_text()
    _check_static(html)
    assert f"<td>{docs}</td>" in html  # the input as the user named it
    assert "escalation rate " in html and "no earlier runs to compare" in html

    if CHROMIUM is None:
        pytest.skip("chromium not installed: the page was checked as text only")
    m = measure(page, tmp_path)
    _check_cost_chart(m, report)
    _check_throughput_chart(m, report)
    _check_escalation_chart(m, report)
    latency = report["latency"]
    assert any(f"p50 {latency['slm']['p50_ms']:,.0f} ms" in t for t in m["texts"]["latency"])
    assert "latency per document (ms, log scale)" in m["texts"]["latency"]
    shot = tmp_path / "report.png"
    screenshot(page, shot, tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def _check_cost_chart(m: dict[str, Any], report: dict[str, Any]) -> None:
    """Both cumulative lines on one dollar axis: each ends at its dollar figure, and
    the ratio of their heights is the ratio of the figures, within a pixel."""
    usd = axis_scale(m["ticks"]["cost-y"])
    assert all(t["label"].startswith("$") for t in m["ticks"]["cost-y"])
    actual, cf = m["series"]["cost-actual"], m["series"]["cost-counterfactual"]
    spent, all_frontier = report["frontier"]["usd"], report["counterfactual"]["so_far_usd"]
    assert abs(actual["end"]["y"] - usd(spent)) <= PIXEL
    assert abs(cf["end"]["y"] - usd(all_frontier)) <= PIXEL
    zero = usd(0.0)
    assert abs(actual["start"]["y"] - zero) <= PIXEL and abs(cf["start"]["y"] - zero) <= PIXEL
    height_actual, height_cf = zero - actual["end"]["y"], zero - cf["end"]["y"]
    assert abs(height_actual - height_cf * spent / all_frontier) <= PIXEL
    assert height_actual < height_cf  # the cascade spends less, and is drawn lower
    saving = report["counterfactual"]["saving_pct"]
    assert f"saved: {saving:.1f} %" in m["texts"]["cost"]
    assert "cumulative frontier cost (US dollars)" in m["texts"]["cost"]


def _check_throughput_chart(m: dict[str, Any], report: dict[str, Any]) -> None:
    rate = axis_scale(m["ticks"]["throughput-y"])
    average = m["series"]["throughput-average"]
    assert abs(average["start"]["y"] - rate(report["docs_per_s"])) <= PIXEL
    assert "documents per second" in m["texts"]["throughput"]
    assert any(t.startswith("Documents per second, rolling") for t in m["texts"]["throughput"])
    slm = m["series"]["throughput-slm"]["box"]
    assert slm["top"] < rate(0.0) - PIXEL  # a rate above zero is drawn


def _check_escalation_chart(m: dict[str, Any], report: dict[str, Any]) -> None:
    """Bars carry label names, run from the highest rate down, and are as long as
    their label's rate in the ``escalation_by_label`` view."""
    with session_scope() as s:
        rates = {
            label: 100 * float(r)
            for label, r in s.execute(
                text(
                    "SELECT slm_label, escalation_rate FROM escalation_by_label "
                    "WHERE run_id = :r AND escalated > 0"
                ),
                {"r": report["run_id"]},
            )
        }
    names = [t["label"] for t in m["ticks"]["escalation-y"]]
    assert sorted(names) == sorted(rates)
    pct = axis_scale(m["ticks"]["escalation-x"])
    widths = []
    for i, name in enumerate(names):
        bar = m["series"][f"escalation-bar-{i}"]["box"]
        assert abs(bar["left"] - pct(0.0)) <= PIXEL
        assert abs(bar["right"] - pct(rates[name])) <= PIXEL, name
        widths.append(bar["right"] - bar["left"])
    assert widths == sorted(widths, reverse=True)
    overall = m["series"]["escalation-average"]["start"]["x"]
    assert abs(overall - pct(100 * report["escalation_rate"])) <= PIXEL


def test_parked_documents_show_saving_so_far_and_projected(
    use_settings: Callable[..., None], sqlite_url: str, tmp_path: Path
) -> None:
    """No frontier configured: the escalated documents park. The report does not claim
    100 % as the saving; it projects the parked documents at the cost per escalation."""
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    answered = write_fake_run(200, escalate_share=0.2, seed=3)
    fake = write_fake_run(200, escalate_share=0.2, parked=True, seed=4)
    assert answered.escalated and fake.parked
    data = json.loads(_invoke("report", str(fake.run_id), "--format", "json").stdout)
    cf, ahead = data["counterfactual"], data["projection"]
    assert data["frontier"]["usd"] == 0 and cf["saving_pct"] == 100.0
    # Priced at the task's measured cost per escalated document (the earlier run's calls).
    assert ahead["waiting_documents"] == fake.parked
    assert ahead["usd_per_escalation"] == pytest.approx(answered.frontier_usd / answered.escalated)
    assert ahead["basis"] == f"recorded calls on {answered.escalated} documents"
    projected = fake.parked * ahead["usd_per_escalation"]
    assert ahead["projected_usd"] == pytest.approx(projected, rel=1e-5)
    expected = 100 * (1 - projected / cf["all_frontier_usd"])
    assert ahead["saving_pct"] == pytest.approx(expected, abs=0.01) and expected < 100
    table = _invoke("report", str(fake.run_id)).stdout
    assert "saving so far" in table and "projected saving" in table
    assert f"{ahead['saving_pct']:.2f} %" in table

    page = tmp_path / "parked.html"
    _invoke("report", str(fake.run_id), "--html", str(page))
    html = page.read_text()
    _check_static(html)
    assert re.search(rf"projected saving of <strong>{ahead['saving_pct']:.1f} %", html)
    if CHROMIUM is None:
        pytest.skip("chromium not installed: the page was checked as text only")
    m = measure(page, tmp_path)
    usd = axis_scale(m["ticks"]["cost-y"])
    marker = m["series"]["cost-projected"]
    assert abs(marker["end"]["y"] - usd(ahead["projected_usd"])) <= PIXEL
    assert abs(marker["start"]["y"] - usd(0.0)) <= PIXEL
    saving = m["texts"]["cost"]
    assert "saved so far: 100.0 %" in saving and f"projected: {ahead['saving_pct']:.1f} %" in saving
