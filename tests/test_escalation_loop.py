"""The escalation policy end to end with the BANKING77 demo model served by llama.cpp:
calibration and policy commands, the policy in a run, drift, audit samples, taxonomy
changes, break-even, and escalations becoming teacher data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Document, ModelVersion, Prediction, Run, TeacherExample
from tests.conftest import ROOT
from tests.helpers import OFF_TOPIC, counts, final_labels, invoke
from workers.slm import audited

MODEL = ROOT / "demo" / "banking77-lora"


def report(run_id: int) -> dict[str, Any]:
    return json.loads(invoke("report", str(run_id), "--format", "json").stdout)  # type: ignore[no-any-return]


def manifest(version: int = 1) -> dict[str, Any]:
    with session_scope() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        return dict(row.manifest)


def test_calibrate_and_policy_commands_set_what_runs_use(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_N_THREADS="2")
    common = ["--task", "b77", "--limit", "80"]
    out = invoke(
        "calibrate", "--model", str(MODEL), "--taxonomy", str(banking_taxonomy), *common, "--json"
    ).stdout
    figures = json.loads(out)
    assert figures["documents"] == 80 and 0.05 < figures["temperature"] < 20
    assert figures["nll_after"] <= figures["nll_before"]
    assert manifest()["temperature"] == figures["temperature"]
    assert manifest()["heldout"]["path"].endswith("heldout.csv")

    shown = invoke("policy", "set", "--max-escalation", "0.1", *common).stdout
    assert "(2-fold)" in shown and "per-label" in shown
    policy = manifest()["policy"]
    assert policy["target"] == {"kind": "max_escalation", "value": 0.1}
    assert policy["fitted"]["escalation_rate"] <= 0.1 and policy["per_label"] == {}
    # Fitted to the 95 % upper bound on unseen documents, not the held-out rate.
    assert policy["fitted"]["escalation_rate_upper_95"] <= 0.1 + 1e-6
    assert "at most" in shown and "(95 % bound)" in shown
    assert policy["temperature"] == figures["temperature"]
    # Escalations offer the SLM's top k labels, k the smallest reaching the target recall.
    rule = policy["candidates"]
    assert rule["target_recall"] == 0.995 and 0 <= rule["k"] <= 38
    assert rule["k"] == 0 or rule["recall"] >= 0.995
    shown = json.loads(invoke("policy", "show", "--task", "b77").stdout)
    assert shown["threshold"] == policy["threshold"]
    assert shown["candidates"] == rule
    assert (
        shown["fitted"]["escalation_rate_upper_95"] == policy["fitted"]["escalation_rate_upper_95"]
    )

    chart = tmp_path / "curve.png"
    points = json.loads(invoke("policy", "curve", *common, "--json", "--chart", str(chart)).stdout)
    assert chart.stat().st_size > 10_000
    assert [p["escalation_rate"] for p in points] == sorted(p["escalation_rate"] for p in points)

    # A new run uses the stored policy: its threshold, and the decision per prediction.
    docs = write_jsonl([{"id": str(i), "text": r["text"]} for i, r in enumerate(banking[:60])])
    invoke("run", str(docs), "--task", "b77")
    with session_scope() as s:
        assert s.get_one(Run, 1).threshold == pytest.approx(policy["threshold"])
        decisions = s.execute(
            select(Prediction.confidence, Prediction.escalated).where(Prediction.stage == "slm")
        ).all()
    assert len(decisions) == 60
    assert all(esc == (conf < policy["threshold"]) for conf, esc in decisions)
    data = report(1)
    assert data["escalated"] == sum(esc for _, esc in decisions)
    rate_check = data["drift"][0]
    assert rate_check["basis"] == "held-out data of the policy"
    assert rate_check["expected"] == pytest.approx(policy["fitted"]["escalation_rate"], abs=1e-4)
    # Break-even: no teacher calls were paid; the demo adapter's recorded training time was.
    be = data["break_even"]
    assert be["teacher_usd"] == 0 and be["finetune_seconds"] == manifest()["train_seconds"]
    assert be["one_off_usd"] == pytest.approx(be["finetune_seconds"] / 3600 * 2.5, rel=1e-4)
    saving = data["break_even"]["saving_per_1k_docs"] / 1000
    assert saving > 0 and be["break_even_documents"] == round(be["one_off_usd"] / saving)

    # Recalibrating invalidates the policy: it was solved at the old temperature.
    result = CliRunner().invoke(cli, ["calibrate", *common])
    assert result.exit_code == 0 and "policy set` again" in result.output
    assert "policy" not in manifest()


def test_drift_is_flagged_on_a_shifted_stream_and_quiet_on_a_steady_one(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_N_THREADS="2")
    streams = {
        "first.jsonl": [r["text"] for r in banking[:60]],
        "steady.jsonl": [r["text"] for r in banking[60:120]],
        "shifted.jsonl": [f"{t} ({i})" for i, t in enumerate(OFF_TOPIC * 10)],
    }
    for name, texts in streams.items():
        path = write_jsonl([{"text": t} for t in texts], name)
        args = ["run", str(path), "--task", "b77", "--model", str(MODEL)]
        invoke(*args, "--taxonomy", str(banking_taxonomy))
    first, steady, shifted = (report(i)["drift"][0] for i in (1, 2, 3))
    assert first["expected"] is None and not first["flagged"]
    assert steady["basis"] == "1 earlier run(s) of this model" and not steady["flagged"], steady
    assert shifted["flagged"], shifted
    assert shifted["observed"] > 0.5
    assert "DRIFT" in invoke("report", "3").stdout


def test_a_changed_taxonomy_sends_everything_to_the_frontier_as_teacher_data(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    scripted: ScriptedServer,
    tmp_path: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, OPENAI_BASE_URL=scripted.base_url)
    docs = write_jsonl([{"id": str(i), "text": r["text"]} for i, r in enumerate(banking[:20])])
    invoke(
        "run",
        str(docs),
        "--task",
        "b77",
        "--model",
        str(MODEL),
        "--taxonomy",
        str(banking_taxonomy),
    )
    assert counts(1)["stages"]["slm"] == 20

    grown = tmp_path / "grown.json"
    grown.write_text(json.dumps([*json.loads(banking_taxonomy.read_text()), "crypto_question"]))
    invoke("run", str(docs), "--task", "b77", "--taxonomy", str(grown))
    c = counts(2)
    assert c["stages"] == {"frontier": 20} and c["labelled"] == 20, c
    data = report(2)
    assert "trained for 77 labels" in data["slm_bypass"] and "1 added" in data["slm_bypass"]
    assert "SLM bypassed" in invoke("report", "2").stdout
    with session_scope() as s:
        sources = dict(
            s.execute(
                select(TeacherExample.source, func.count()).group_by(TeacherExample.source)
            ).all()
        )
    # Every frontier answer became a teacher example (run 1's escalations included).
    assert sources["escalation"] == 20, sources


def test_an_audit_sample_of_kept_documents_measures_agreement(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    scripted: ScriptedServer,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        OPENAI_BASE_URL=scripted.base_url,
        SHIFTDOWN_THRESHOLD="0.0",
        SHIFTDOWN_AUDIT_RATE="0.5",
    )
    docs = write_jsonl([{"id": str(i), "text": r["text"]} for i, r in enumerate(banking[:40])])
    invoke(
        "run",
        str(docs),
        "--task",
        "b77",
        "--model",
        str(MODEL),
        "--taxonomy",
        str(banking_taxonomy),
    )
    with session_scope() as s:
        ids = list(s.scalars(select(Document.id)))
    expected = sum(audited(i, 0.5) for i in ids)
    c = counts(1)
    assert 10 <= expected <= 30
    assert c["states"] == {"classified": 40}, c
    assert {source for _, source in final_labels(1).values()} == {"slm"}
    assert c["stages"] == {"slm": 40, "audit": expected} and c["frontier_calls"] == expected
    audit = report(1)["agreement"]["audited"]
    assert audit["documents"] == expected and audit["agreement"] > 0.8
    with session_scope() as s:
        n_audit = s.scalar(select(func.count()).where(TeacherExample.source == "audit"))
    assert n_audit == expected
    # Redelivery of the same batch audits nothing twice.
    from workers.slm import process_batch

    assert process_batch(ids) == 0
    assert counts(1)["stages"]["audit"] == expected
