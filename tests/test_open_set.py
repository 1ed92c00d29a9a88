"""Open-set tasks: documents that fit none of the labels end as the none outcome, recorded
without a label, learned by the SLM, answered by the frontier, counted by the report."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text, update

from bench.open_set_data import relabel, split_labels
from bench.scripted_server import ScriptedServer
from models.base import default_gguf_path
from models.policy import (
    MAX_ESCALATION,
    Economics,
    Target,
    answers,
    fit_none_margin,
    fit_policy,
    outcome,
)
from models.registry import check_labels
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError, TaxonomyError
from shiftdown.manifest import ModelManifest
from shiftdown.prompts import answer_schema, frontier_system_prompt
from shiftdown.reporting import agreement
from shiftdown.schema import ModelVersion, Prediction, Task, TeacherExample
from shiftdown.taxonomy import NONE_LABEL, Taxonomy
from tests.conftest import DEMO
from tests.helpers import OFF_TOPIC as ALL_OFF_TOPIC
from tests.helpers import invoke, submit_to_a_worker

KNOWN = ["card_arrival", "pin_blocked", "age_limit"]
OFF_TOPIC = ALL_OFF_TOPIC[:4]


def test_an_open_set_taxonomy_adds_the_none_outcome_and_keeps_closed_ones_as_they_were() -> None:
    closed = Taxonomy.from_data(KNOWN)
    opened = Taxonomy.from_data({"labels": KNOWN, "open_set": True})
    assert closed.outcomes == KNOWN and not closed.open_set
    assert opened.outcomes == [*KNOWN, NONE_LABEL] and opened.names == KNOWN
    assert NONE_LABEL in opened and NONE_LABEL not in closed
    assert opened.label_of(NONE_LABEL) is None and opened.label_of("age_limit") == "age_limit"
    # A closed taxonomy's hash is the one stored before open sets existed.
    assert closed.hash == Taxonomy.from_data({"labels": KNOWN}).hash != opened.hash
    assert opened.with_open_set(False).hash == closed.hash
    with pytest.raises(TaxonomyError, match="open-set taxonomy cannot have a label named"):
        Taxonomy.from_data({"labels": [*KNOWN, NONE_LABEL], "open_set": True})
    with pytest.raises(TaxonomyError, match="open_set must be"):
        Taxonomy.from_data({"labels": KNOWN, "open_set": "yes"})
    # A closed task may still have a label of that name: it is an ordinary label there.
    assert Taxonomy.from_data([*KNOWN, NONE_LABEL]).label_of(NONE_LABEL) == NONE_LABEL


def test_a_closed_set_model_is_not_served_to_an_open_set_task() -> None:
    task = Task(name="t", taxonomy=Taxonomy.from_data(KNOWN).to_data(), open_set=True)
    with pytest.raises(ConfigError, match="trained closed-set for task 't'"):
        check_labels(ModelManifest(labels=KNOWN), task)
    check_labels(ModelManifest(labels=[*KNOWN, NONE_LABEL]), task)


def test_the_frontier_request_offers_none_only_on_an_open_set_task() -> None:
    opened = Taxonomy.from_data({"labels": KNOWN, "open_set": True})
    closed = opened.with_open_set(False)
    assert f"\n- {NONE_LABEL}: " in frontier_system_prompt(opened)
    assert f"- {NONE_LABEL}" not in frontier_system_prompt(closed)
    assert answer_schema(opened)["properties"]["label"]["enum"] == [*KNOWN, NONE_LABEL]
    assert answer_schema(closed)["properties"]["label"]["enum"] == KNOWN


def test_the_policy_gives_none_its_own_threshold_and_reports_none_recall() -> None:
    # Ten documents: four none in truth; the SLM calls three of them none (one wrongly,
    # at low confidence) and misses one.
    predicted = ["a", "a", "b", "b", "a", NONE_LABEL, NONE_LABEL, NONE_LABEL, "b", "a"]
    gold = ["a", "a", "b", "b", "a", NONE_LABEL, NONE_LABEL, "a", NONE_LABEL, NONE_LABEL]
    conf = np.array([0.9, 0.95, 0.9, 0.8, 0.85, 0.9, 0.8, 0.3, 0.4, 0.5])
    correct = np.array([p == g for p, g in zip(predicted, gold, strict=True)])
    nones = (
        np.array([p == NONE_LABEL for p in predicted]),
        np.array([g == NONE_LABEL for g in gold]),
    )
    econ = Economics(usd_per_escalation=0.001)
    policy = fit_policy(conf, predicted, correct, Target(MAX_ESCALATION, 0.5), econ, nones=nones)
    # The wrong none (0.3) escalates, the right ones stay: none's threshold is its own.
    assert 0.3 < policy.per_label[NONE_LABEL] <= 0.8
    escalate = policy.escalate(predicted, conf)
    assert not escalate[5] and not escalate[6] and escalate[7]
    figures = outcome(escalate, correct, econ, nones)
    found = 2 + int(escalate[8]) + int(escalate[9])  # escalated nones: the frontier's
    assert figures.none_recall == pytest.approx(found / 4)
    assert figures.none_precision == 1.0
    assert policy.fitted["none_rate"] == 0.4
    # A closed-set outcome has no none figures at all.
    assert "none_recall" not in outcome(escalate, correct, econ).as_dict()


def test_a_none_margin_trades_none_recall_for_fewer_labelled_documents_called_none() -> None:
    # Outcomes a, b, none; five none documents whose none/best-label ratios differ.
    probs = np.array(
        [
            [0.10, 0.10, 0.80],  # ratio 8
            [0.20, 0.10, 0.70],  # 3.5
            [0.30, 0.10, 0.60],  # 2
            [0.40, 0.05, 0.55],  # 1.375
            [0.60, 0.10, 0.30],  # 0.5: the SLM answers a
            [0.45, 0.10, 0.45],  # a labelled document at a tie
        ]
    )
    is_none = np.array([True] * 5 + [False])
    margin = fit_none_margin(probs, 2, is_none, 0.6)  # 3 of 5
    assert np.log(2) - 1e-9 < margin < np.log(2)
    top, conf = answers(probs, 2, margin)
    assert list(top) == [2, 2, 2, 0, 0, 0] and conf[3] == 0.40
    assert list(answers(probs, 2, 0.0)[0]) == [2, 2, 2, 2, 0, 0]
    assert list(answers(probs, None, 5.0)[0]) == [2, 2, 2, 2, 0, 0]  # closed: no margin
    assert fit_none_margin(probs, 2, is_none, 1.0) < np.log(0.5)  # all five: below 0


def test_the_open_set_bench_data_answers_unknown_labels_none() -> None:
    labels = [f"l{i}" for i in range(20)]
    known, unknown = split_labels(labels, 0.75, seed=3)
    assert len(unknown) == 5 and set(known) | set(unknown) == set(labels)
    assert split_labels(labels, 0.75, seed=3) == (known, unknown)
    rows = [{"text": f"t{i}", "category": label} for i, label in enumerate(labels)]
    pairs = relabel(rows, set(unknown), {unknown[0]})
    assert len(pairs) == 19  # the dropped label's query is not in the teacher set
    assert {label for _, label in pairs} == {*known, NONE_LABEL}


def test_a_frontier_none_is_final_recorded_without_a_label_and_taught(
    use_settings: Callable[..., None],
    sqlite_url: str,
    scripted: ScriptedServer,
    reference: dict[str, str],
    banking: list[dict[str, str]],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    taxonomy = tmp_path / "open.json"
    taxonomy.write_text(json.dumps({"labels": KNOWN, "open_set": True}))
    # The stand-in frontier: the label where the document has one of the task's, else none.
    scripted.label_for = lambda t: reference[t] if reference.get(t) in KNOWN else NONE_LABEL
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_N_THREADS="2",
        # Every document escalates: the frontier answers each.
        SHIFTDOWN_THRESHOLD="1.0",
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
    )
    on_topic = [r["text"] for r in banking if r["category"] in KNOWN][:6]
    docs = write_jsonl([{"id": f"d{i}", "text": t} for i, t in enumerate(on_topic + OFF_TOPIC)])
    # The base model, zero-shot: its prompt lists the labels and none.
    base = str(default_gguf_path())
    invoke("run", str(docs), "--task", "open", "--taxonomy", str(taxonomy), "--model", base)

    request = scripted.requests[0]
    assert f"- {NONE_LABEL}: " in request["messages"][0]["content"]
    with session_scope() as s:
        assert s.get_one(Task, "open").open_set
        slm = s.scalars(select(Prediction.distribution).where(Prediction.stage == "slm")).all()
        frontier = dict(
            s.execute(
                select(Prediction.document_id, Prediction.label).where(
                    Prediction.stage == "frontier"
                )
            ).all()
        )
        view = dict(s.execute(text("SELECT external_id, outcome FROM document_labels")).all())
        taught = dict(s.execute(select(TeacherExample.text, TeacherExample.label)).all())
    assert len(slm) == 10 and all(NONE_LABEL in (d or {}) for d in slm)
    assert len(frontier) == 10 and sum(label is None for label in frontier.values()) == 4
    assert view == {f"d{i}": "label" if i < 6 else "none" for i in range(10)}
    assert all(taught[t] == NONE_LABEL for t in OFF_TOPIC)
    assert all(taught[t] in KNOWN for t in on_topic)

    data = json.loads(invoke("report", "1", "--format", "json").stdout)
    assert data["none"] == 4 and data["none_rate"] == 0.4
    assert any(check["measure"] == "none rate" for check in data["drift"])
    shown = invoke("report", "1").stdout
    assert "none of the labels (open set)" in shown
    exported = invoke("results", "1", "--format", "jsonl").stdout.splitlines()
    labels = {row["external_id"]: row["label"] for row in map(json.loads, exported)}
    assert labels["d6"] is None and labels["d0"] in KNOWN

    # Two none outcomes agree (an audit or an escalation that confirms the SLM's none):
    # with the SLM's answer for the off-topic documents set to none, every one agrees.
    with session_scope() as s:
        off = [d for d, label in frontier.items() if label is None]
        s.execute(
            update(Prediction)
            .where(Prediction.document_id.in_(off), Prediction.stage == "slm")
            .values(label=None)
        )
    with session_scope() as s:
        pairs = s.execute(
            text(
                "SELECT s.label, f.label FROM predictions s JOIN predictions f "
                "ON f.document_id = s.document_id AND f.stage = 'frontier' WHERE s.stage = 'slm'"
            )
        ).all()
        agreed = s.execute(
            text("SELECT agreed FROM slm_frontier_agreement WHERE run_id = 1")
        ).scalar()
        measured = agreement(s, 1, "frontier")
    assert agreed == sum(a == b for a, b in pairs) >= 4
    assert measured.agreement == pytest.approx(agreed / 10)

    # Closing the task again: the none answer is no longer offered.
    invoke("tasks", "set", "open", "--closed-set")
    with session_scope() as s:
        assert not s.get_one(Task, "open").open_set


@pytest.fixture(scope="module")
def tiny_open(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three BANKING77 labels and the none outcome (a fourth label's queries, answered
    none by the teacher), learned by `shiftdown finetune` (LoRA, CPU, about a minute)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from models.training.finetune import stratified_split

    with (DEMO / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [
            (r["text"], r["category"] if r["category"] in KNOWN else NONE_LABEL)
            for r in csv.DictReader(f)
            if r["category"] in (*KNOWN, "exchange_rate")
        ]
    train, held_out = stratified_split(rows, 0.4, seed=1)
    folder = tmp_path_factory.mktemp("tiny-open")
    (folder / "open.json").write_text(json.dumps({"labels": KNOWN, "open_set": True}))
    with (folder / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(train)
    invoke(
        "finetune", "--data", str(folder / "train.csv"), "--taxonomy", str(folder / "open.json"),
        "--out", str(folder / "model"), "--valid-frac", "0", "--epochs", "4", "--lr", "2e-3",
        "--batch-size", "8",
    )  # fmt: skip
    return {
        "dir": folder / "model",
        "taxonomy": folder / "open.json",
        "held_out": held_out,
    }


def test_the_none_outcome_end_to_end_through_redis_postgres_and_a_worker(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    scripted: ScriptedServer,
    reference: dict[str, str],
    tiny_open: dict[str, Any],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    env = {**stack_env, "SHIFTDOWN_THRESHOLD": "0.8"}
    use_settings(**env)
    scripted.label_for = lambda t: reference[t] if reference.get(t) in KNOWN else NONE_LABEL
    # Half of the held-out queries fit the policy, the other half is the run.
    held: list[tuple[str, str]] = tiny_open["held_out"]
    policy_data, held_out = held[::2], held[1::2]
    expected = {f"q{i}": label for i, (_, label) in enumerate(held_out)}
    docs = write_jsonl([{"id": f"q{i}", "text": t} for i, (t, _) in enumerate(held_out)])
    invoke("db", "upgrade")
    # A policy with the none margin, fitted on queries the model was not trained on.
    heldout = tmp_path / "heldout.csv"
    with heldout.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *policy_data])
    shown = invoke(
        "policy", "set", "--task", "open", "--taxonomy", str(tiny_open["taxonomy"]),
        "--model", str(tiny_open["dir"]), "--data", str(heldout), "--kept-accuracy", "0.9",
        "--none-recall", "0.9", "--candidate-recall", "0",
    ).stdout  # fmt: skip
    assert "none recall" in shown and "the SLM answers none when" in shown
    # finetune fitted the model's familiarity score: policy set says what it adds.
    assert "unfamiliar documents (escalated whatever their confidence)" in shown
    with session_scope() as s:
        policy = s.scalars(select(ModelVersion.manifest)).one()["policy"]
    margin = policy["none_margin"]
    assert NONE_LABEL in policy["per_label"] and policy["fitted"]["none_recall"] >= 0.9
    run_id = submit_to_a_worker(
        env, tmp_path / "worker.log", str(docs), "--task", "open",
        "--taxonomy", str(tiny_open["taxonomy"]), "--model", str(tiny_open["dir"]),
    )  # fmt: skip

    with session_scope() as s:
        rows = s.execute(
            text(
                "SELECT d.external_id, l.outcome, l.label, l.source, p.escalated, "
                "p.distribution "
                "FROM document_labels l JOIN documents d ON d.id = l.document_id "
                "JOIN predictions p ON p.document_id = d.id AND p.stage = 'slm' "
                "WHERE l.run_id = :run"
            ),
            {"run": run_id},
        ).all()
        by_label = s.execute(
            text("SELECT slm_label, documents FROM escalation_by_label WHERE run_id = :run"),
            {"run": run_id},
        ).all()
    assert len(rows) == len(held_out)
    # The SLM learned none: it keeps some none answers itself, with no label recorded.
    kept_none = [r for r in rows if r.source == "slm" and r.outcome == "none"]
    assert kept_none and all(r.label is None and not r.escalated for r in kept_none)
    # The worker applied the policy's margin: each SLM none beat its best label by it.
    for r in [r for r in rows if r.outcome == "none" and r.source == "slm"]:
        dist = r.distribution if isinstance(r.distribution, dict) else json.loads(r.distribution)
        best = max(p for k, p in dist.items() if k != NONE_LABEL)
        # The stored distribution is rounded to 6 decimals: a best label of 0.0 is below it.
        assert best == 0.0 or np.log(dist[NONE_LABEL] / best) > margin - 1e-3
    assert sum(expected[r.external_id] == NONE_LABEL for r in kept_none) >= 0.8 * len(kept_none)
    # What the frontier answered is final, none included.
    for r in rows:
        if r.source == "frontier":
            want = expected[r.external_id]
            assert (r.outcome, r.label) == (
                ("none", None) if want == NONE_LABEL else ("label", want)
            )
    none_total = sum(r.outcome == "none" for r in rows)
    # Most of them (the rest ended as labels the SLM kept: the kept-accuracy target and
    # the none recall asked of it allow some).
    assert none_total >= 0.5 * sum(v == NONE_LABEL for v in expected.values())
    # The views: a none prediction is a row without a label, never the label "none".
    labels_seen = {label for label, _ in by_label}
    assert None in labels_seen and NONE_LABEL not in labels_seen
    data = json.loads(invoke("report", str(run_id), "--format", "json").stdout)
    assert data["none"] == none_total
    assert data["none_rate"] == pytest.approx(none_total / len(rows), abs=1e-4)
