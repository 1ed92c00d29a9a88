"""Teacher sets: imported labels, and frontier labels from the scripted server with
every call costed and recorded."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.costs import DEFAULT_PRICES
from shiftdown.db import session_scope
from shiftdown.schema import FrontierCall, TeacherExample


def _ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_frontier_labels_a_seeded_sample_with_costs(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    banking: list[dict[str, str]],
    scripted: ScriptedServer,
    reference: dict[str, str],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        OPENAI_BASE_URL=scripted.base_url,
        SHIFTDOWN_FRONTIER_MODEL="gpt-4o-mini",
    )
    docs = write_jsonl([{"text": r["text"]} for r in banking[:30]])
    out = _ok(
        "teach",
        "label",
        str(docs),
        "--sample",
        "10",
        "--seed",
        "3",
        "--taxonomy",
        str(banking_taxonomy),
    )
    price = DEFAULT_PRICES["gpt-4o-mini"]
    per_call = (120 * price.input_per_1m + 7 * price.output_per_1m) / 1e6
    assert "10 example(s) added" in out and f"{10 * per_call:.4f} USD" in out
    with session_scope() as s:
        examples = list(s.scalars(select(TeacherExample)))
        calls = list(s.scalars(select(FrontierCall)))
    assert len(examples) == 10 == len(calls) == len(scripted.requests)
    assert all(e.label == reference[e.text] and e.source == "frontier" for e in examples)
    assert sum(c.cost_usd or 0 for c in calls) == pytest.approx(10 * per_call)
    # The same seed picks the same sample: nothing is labelled (or billed) twice.
    assert "0 example(s) added, 10 already known" in _ok(
        "teach", "label", str(docs), "--sample", "10", "--seed", "3"
    )
    assert len(scripted.requests) == 10

    export = tmp_path / "teacher.csv"
    assert "10 example(s), sha256 " in _ok("teach", "export", str(export))
    with export.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 10


def test_import_existing_labels_and_refuse_unknown_ones(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    tmp_path: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(json.dumps({"text": f"q{i}", "intent": "card_arrival"}) + "\n" for i in range(5))
    )
    out = _ok(
        "teach",
        "import",
        str(good),
        "--label-column",
        "intent",
        "--taxonomy",
        str(banking_taxonomy),
    )
    assert "5 example(s) added" in out
    assert "0 example(s) added, 5 already known" in _ok(
        "teach", "import", str(good), "--label-column", "intent"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("text,intent\nhello,card_arrival\nbye,not_a_label\n")
    result = CliRunner().invoke(cli, ["teach", "import", str(bad), "--label-column", "intent"])
    assert (
        result.exit_code != 0
        and "line 3: label 'not_a_label' is not in the taxonomy" in result.output
    )
