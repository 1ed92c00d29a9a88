"""``shiftdown report --html``: a self-contained page whose four charts render in a real
headless Chromium; ``--format csv`` for scripts."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.scripted_server import ScriptedServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_and_csv_reports(
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
    runner = CliRunner()
    docs = write_jsonl([{"text": r["text"]} for r in banking[:24]])
    assert (
        runner.invoke(cli, ["run", str(docs), "--taxonomy", str(banking_taxonomy)]).exit_code == 0
    )
    page = tmp_path / "report.html"
    result = runner.invoke(cli, ["report", "--format", "csv", "--html", str(page)])
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(io.StringIO(result.stdout)))
    assert row["documents"] == "24" and float(row["counterfactual.all_frontier_usd"]) > 0
    text = page.read_text()
    assert text.count('<svg class="chart"') == 4
    assert "<script" not in text and "http" not in text.split("<body>")[1]  # self-contained

    if CHROMIUM is None:
        pytest.skip("chromium not installed: the page was checked as text only")
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert dom.count('<svg class="chart"') == 4
    for title in (
        "Throughput over",
        "Cumulative cost",
        "Escalation rate by predicted label",
        "SLM latency",
    ):
        assert title in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--window-size=1360,1400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
