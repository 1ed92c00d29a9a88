from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from models.evaluate import accuracy_at_coverage, expected_calibration_error, metrics


def test_metrics_on_known_values() -> None:
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", "b"]
    m = metrics(gold, pred, [0.9, 0.6, 0.8, 0.7], ["a", "b"])
    assert m["accuracy"] == 0.75
    # F1(a) = 2/3 (p=1, r=.5), F1(b) = 0.8 (p=2/3, r=1)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-4)
    assert m["per_label"]["a"] == {
        "accuracy": 0.5,
        "support": 2,
        "f1": pytest.approx(0.6667, abs=1e-4),
    }
    assert m["confused_pairs"] == [{"gold": "a", "predicted": "b", "count": 1}]
    # Keeping the most confident half (0.9, 0.8) keeps two correct answers.
    assert m["accuracy_at_coverage"]["0.5"] == 1.0


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    conf = np.array([0.75] * 4)
    assert expected_calibration_error(conf, np.array([True, True, True, False])) == pytest.approx(
        0.0
    )
    assert expected_calibration_error(
        np.array([1.0, 1.0]), np.array([True, False])
    ) == pytest.approx(0.5)
    assert accuracy_at_coverage(np.array([0.1, 0.9]), np.array([False, True]), 0.5) == 1.0


def test_eval_command_through_llama_cpp(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    tmp_path: Path,
    banking: list[dict[str, str]],
) -> None:
    pytest.importorskip("matplotlib")
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    data = tmp_path / "labelled.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": r["text"], "label": r["category"]}) + "\n" for r in banking[:12]
        )
    )
    chart = tmp_path / "eval.png"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "--data",
            str(data),
            "--taxonomy",
            str(banking_taxonomy),
            "--json",
            "--chart",
            str(chart),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["documents"] == 12
    assert set(report["accuracy_at_coverage"]) == {"0.5", "0.7", "0.8", "0.9", "0.95"}
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["ece"] <= 1 and report["docs_per_s"] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
