"""``shiftdown retrain``: shadow evaluation promotes a better candidate, refuses a worse
one, and trains a new candidate from the teacher set the cascade accumulated."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import cli
from models.base import default_gguf_path
from shiftdown.db import session_scope
from shiftdown.schema import ModelVersion, Task

pytest.importorskip("torch")


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def promoted() -> int:
    with session_scope() as s:
        task = s.get_one(Task, "tiny")
        return s.get_one(ModelVersion, task.model_version_id).version


@pytest.mark.slow
def test_retrain_promotes_a_better_candidate_and_refuses_a_worse_one(
    tiny: dict[str, Any],
    use_settings: Callable[..., None],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_N_THREADS="2")
    heldout = tmp_path / "heldout.csv"
    with heldout.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *tiny["held_out"]])
    # v1: the base model, zero-shot on the four labels.
    invoke("tasks", "set", "tiny", "--taxonomy", str(tiny["taxonomy"]))
    invoke("models", "register", str(default_gguf_path()), "--task", "tiny")
    assert promoted() == 1
    target = ["--task", "tiny", "--data", str(heldout), "--max-escalation", "0.2"]

    better = invoke("retrain", "--candidate", str(tiny["dir"]), *target).stdout
    assert "promoted" in better and promoted() == 2, better

    worse = invoke("retrain", "--candidate", str(default_gguf_path()), *target).stdout
    assert "refused" in worse and promoted() == 2, worse

    # The verdict and the candidate's own calibrated policy are kept with the version.
    with session_scope() as s:
        v2 = s.scalars(select(ModelVersion).where(ModelVersion.version == 2)).one()
        shadow, policy = v2.manifest["shadow"], v2.manifest["policy"]
    assert shadow["wins"] and shadow["candidate"]["overall_accuracy"] > 0.9
    assert policy["target"]["kind"] == "max_escalation"

    # Without --candidate: fine-tune one on the task's teacher set (imported labels here;
    # escalations and audits join it in production), then judge it the same way.
    train = tmp_path / "train.csv"
    with train.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *tiny["train"]])
    invoke("teach", "import", str(train), "--task", "tiny")
    out = invoke("retrain", *target, "--out", str(tmp_path / "cand"), "--epochs", "1").stdout
    assert "shadow evaluation" in out and ("promoted" in out or "refused" in out)
    assert (tmp_path / "cand" / "heldout.csv").is_file()
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 3
