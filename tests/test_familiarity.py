"""Unfamiliar documents: the distance score in the final hidden state, fitted with the
model, reloaded with it, and applied by a real worker (docs/open-set.md)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from bench.scripted_server import ScriptedServer
from bench.unfamiliar import auroc, fpr_at_tpr
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.familiarity import Familiarity, crossfit_scores, fit, ledoit_wolf
from models.familiarity_fit import fit_model_dir, hidden_states, unscored_classifier
from models.hidden_state import STATE_POSITIONS
from models.registry import load_model_dir
from shiftdown.db import session_scope
from shiftdown.errors import ModelError
from shiftdown.manifest import ModelManifest
from tests.helpers import OFF_TOPIC, invoke, submit_to_a_worker

# Documents of no banking topic, and in languages and formats the model never saw.
FOREIGN = [
    "Der Zug nach München hat heute wieder zwanzig Minuten Verspätung.",
    "今天的天气很好，我们去公园散步吧。",  # noqa: RUF001 (Chinese punctuation)
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day';",
    "<html><body><h1>404</h1><p>Page not found</p></body></html>",
]
OPTIONS = RuntimeOptions(n_threads=2, parallel=8)


def clusters(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Three tight labelled clusters in 16 dimensions (``shift`` moves every point off)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:3] * 5
    labels = [f"l{i % 3}" for i in range(n)]
    x = np.stack([centres[i % 3] for i in range(n)]) + rng.normal(0, 0.5, (n, 16))
    return x + shift * np.eye(16)[5] * 5, labels


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_a_score_flags_its_false_flag_rate_of_known_points_and_nearly_all_new_ones(
    method: str, tmp_path: Path
) -> None:
    train, labels = clusters(600, 0)
    held, _ = clusters(400, 1)
    score = fit(method, train, labels, held, false_flag_rate=0.05)  # type: ignore[arg-type]
    assert score.calibration == "heldout" and score.calibrated_on == 400
    known, _ = clusters(2000, 2)
    _, flags = score.unfamiliar(known)
    assert 0.02 < flags.mean() < 0.09
    new, _ = clusters(200, 3, shift=1.0)
    assert score.unfamiliar(new)[1].mean() > 0.95
    # Stored and read back, it scores the same.
    score.save(tmp_path / "f.npz")
    again = Familiarity.load(tmp_path / "f.npz")
    assert again.method == method and again.threshold == score.threshold
    np.testing.assert_allclose(again.scores(known), score.scores(known), atol=2e-3)


def test_without_held_out_data_the_threshold_comes_from_out_of_fold_training_points() -> None:
    train, labels = clusters(600, 0)
    score = fit("knn", train, labels, None, false_flag_rate=0.05)
    assert score.calibration == "crossfit" and score.calibrated_on == 600
    # In fold, every training point is its own nearest neighbour: distance zero.
    assert np.allclose(score.scores(train[:50]), 0.0, atol=1e-5)
    assert crossfit_scores("knn", score.bank, labels).min() > 1e-4  # type: ignore[arg-type]
    known, _ = clusters(2000, 2)
    assert 0.02 < score.unfamiliar(known)[1].mean() < 0.09


def test_states_of_two_positions_count_alike_whatever_their_norms(tmp_path: Path) -> None:
    first, labels = clusters(600, 0)
    second, _ = clusters(600, 5)
    train = np.hstack([first, 100.0 * second])  # the second position's norm dwarfs the first's
    score = fit("knn", train, labels, None, positions=2)
    assert score.positions == 2 and score.dim == 32
    # Moving one position off its cluster is seen, however small that position's norm.
    moved = np.hstack([clusters(50, 3, shift=1.0)[0], 100.0 * clusters(50, 4)[0]])
    assert score.unfamiliar(moved)[1].mean() > 0.9
    assert score.unfamiliar(np.hstack([clusters(50, 3)[0], clusters(50, 4)[0]]))[1].mean() < 0.2
    score.save(tmp_path / "f.npz")
    assert Familiarity.load(tmp_path / "f.npz").positions == 2
    # A file written before there were positions holds one.
    with np.load(tmp_path / "f.npz") as data:
        old = {k: data[k] for k in data.files if k != "positions"}
    np.savez(tmp_path / "old.npz", **old)
    assert Familiarity.load(tmp_path / "old.npz").positions == 1


def test_ledoit_wolf_shrinks_toward_a_scaled_identity_when_dimensions_outnumber_points() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (20, 50))
    x -= x.mean(axis=0)
    cov = ledoit_wolf(x)
    # The sample covariance is singular here; the shrunk one is not, and keeps the trace.
    assert np.linalg.matrix_rank(x.T @ x / 20) < 50
    assert np.linalg.eigvalsh(cov).min() > 0
    assert np.trace(cov) == pytest.approx(np.trace(x.T @ x / 20))


def test_detection_figures_on_a_hand_made_case() -> None:
    scores = np.asarray([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    unknown = np.asarray([False, False, False, True, True, True])
    # Pairs (unknown, known) ranked right: 0.9 and 0.8 beat all three, 0.25 beats two.
    assert auroc(scores, unknown) == pytest.approx(8 / 9)
    # Flagging 95 % of unknowns needs the cut at 0.25: one known of three is above it.
    assert fpr_at_tpr(scores, unknown) == pytest.approx(1 / 3)


def test_hidden_states_are_read_back_from_the_logits_of_the_same_decode(
    tiny: dict[str, Any],
) -> None:
    import llama_cpp

    texts = [t for t, _ in tiny["held_out"]][:24] + OFF_TOPIC
    by_parallel = {}
    for parallel in (1, 8):
        clf = unscored_classifier(tiny["dir"], replace(OPTIONS, parallel=parallel))
        plain = clf.classify_many(texts)
        states = by_parallel[parallel] = hidden_states(clf, texts)
        with_states = clf.classify_many(texts)
        width = clf._llm.n_embd()
        assert states.shape == (len(texts), STATE_POSITIONS * width) and np.isfinite(states).all()
        # Nothing about the decode changes: the same logits, to the bit.
        np.testing.assert_array_equal(
            np.stack([r.logits for r in plain]), np.stack([r.logits for r in with_states])
        )
    # One document at a time (its outputs asked of one decode) or eight together: the
    # same positions' states, up to the rounding of another batch's arithmetic.
    alone, together = (by_parallel[p].reshape(-1, width) for p in (1, 8))
    cosines = (alone * together).sum(1) / np.linalg.norm(alone, axis=1)
    cosines /= np.linalg.norm(together, axis=1)
    assert (cosines > 0.99).all(), cosines.min()
    # llama.cpp's own final hidden states for the last document, asked for as
    # embeddings (at the position before the answer's and the answer's): what the logits
    # gave back, up to the 8-bit activations of the output layer's product.
    item = clf.prepare(texts[-1])
    clf._ready_prefix()
    clf._llm.n_tokens = clf.prefix_tokens
    clf._llm.eval(item.tokens.tolist()[:-STATE_POSITIONS])
    llama_cpp.llama_set_embeddings(clf._llm.ctx, True)
    clf._llm.eval(item.tokens.tolist()[-STATE_POSITIONS:])
    blocks = states[-1].reshape(STATE_POSITIONS, width)
    for got, at in zip(blocks, range(-STATE_POSITIONS, 0), strict=True):
        own = np.ctypeslib.as_array(
            llama_cpp.llama_get_embeddings_ith(clf._llm.ctx, at), shape=(width,)
        )
        assert got @ own / np.linalg.norm(got) / np.linalg.norm(own) > 0.999
        assert np.linalg.norm(got - own) < 0.05 * np.linalg.norm(own)
    llama_cpp.llama_set_embeddings(clf._llm.ctx, False)


def test_the_score_is_fitted_with_the_model_reloaded_with_it_and_checked(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    # `finetune` fitted it (no held-out split there: out-of-fold training documents).
    manifest = ModelManifest.load(tiny["dir"] / "manifest.json")
    ref = manifest.familiarity
    assert ref is not None and ref.method == "knn" and ref.calibration == "crossfit"
    assert ref.bank == len(tiny["train"])
    gguf, adapter, loaded = load_model_dir(tiny["dir"])
    spec = ModelSpec(str(gguf), tuple(loaded.labels or ()), str(adapter), loaded)
    clf = Classifier(spec, OPTIONS)
    assert clf.familiarity is not None and clf.familiarity.threshold == ref.threshold
    known = clf.classify_many([t for t, _ in tiny["held_out"]])
    strange = clf.classify_many(OFF_TOPIC + FOREIGN)
    assert all(r.unfamiliarity is not None for r in known + strange)
    assert np.mean([r.unfamiliar for r in known]) <= 0.15
    # Off-topic, foreign-language and code documents are flagged, a language and a
    # format the model never saw among them.
    assert np.mean([r.unfamiliar for r in strange]) >= 0.8
    assert all(r.unfamiliar for r in strange[len(OFF_TOPIC) :])

    # Refitted with held-out data and the other score, into a copy of the model.
    copy = tmp_path / "model"
    shutil.copytree(tiny["dir"], copy)
    ref2 = fit_model_dir(copy, tiny["train"], tiny["held_out"], OPTIONS, "mahalanobis", 0.1)
    assert ref2.calibration == "heldout" and ref2.calibrated_on == len(tiny["held_out"])
    assert ModelManifest.load(copy / "manifest.json").familiarity == ref2
    # An altered file is refused, not served unprotected.
    (copy / ref2.file).write_bytes(b"not the fitted score")
    with pytest.raises(ModelError, match="not the one the manifest names"):
        gguf, adapter, loaded = load_model_dir(copy)
        Classifier(ModelSpec(str(gguf), tuple(loaded.labels or ()), str(adapter), loaded), OPTIONS)


def test_a_model_without_a_familiarity_file_still_serves(tiny: dict[str, Any]) -> None:
    gguf, adapter, loaded = load_model_dir(tiny["dir"])
    bare = loaded.updated(familiarity=None)
    clf = Classifier(ModelSpec(str(gguf), tuple(bare.labels or ()), str(adapter), bare), OPTIONS)
    results = clf.classify_many(OFF_TOPIC)
    assert clf.familiarity is None
    assert all(r.unfamiliarity is None and not r.unfamiliar and r.hidden is None for r in results)


def test_an_unfamiliar_document_is_escalated_end_to_end_through_redis_postgres_and_a_worker(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    scripted: ScriptedServer,
    reference: dict[str, str],
    tiny: dict[str, Any],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # A threshold of 0 keeps every document on confidence: only unfamiliarity escalates.
    env = {**stack_env, "SHIFTDOWN_THRESHOLD": "0"}
    use_settings(**env)
    labels = json.loads(Path(tiny["taxonomy"]).read_text())
    scripted.label_for = lambda t: reference.get(t, labels[0])
    held = [t for t, _ in tiny["held_out"]]
    strange = OFF_TOPIC + FOREIGN
    docs = write_jsonl(
        [{"id": f"k{i}", "text": t} for i, t in enumerate(held)]
        + [{"id": f"u{i}", "text": t} for i, t in enumerate(strange)]
    )
    invoke("db", "upgrade")
    run_id = submit_to_a_worker(
        env, tmp_path / "worker.log", str(docs), "--task", "tiny",
        "--taxonomy", str(tiny["taxonomy"]), "--model", str(tiny["dir"]),
    )  # fmt: skip
    with session_scope() as s:
        rows = s.execute(
            text(
                "SELECT d.external_id, d.final_stage, p.escalated, p.escalation_reason, "
                "p.unfamiliar, p.unfamiliarity FROM documents d "
                "JOIN predictions p ON p.document_id = d.id AND p.stage = 'slm' "
                "WHERE d.run_id = :run"
            ),
            {"run": run_id},
        ).all()
        view = s.execute(
            text("SELECT * FROM escalation_reasons WHERE run_id = :run"), {"run": run_id}
        ).one()
    assert len(rows) == len(held) + len(strange)
    assert all(r.unfamiliarity is not None for r in rows)
    flagged = [r for r in rows if r.unfamiliar]
    # Each flagged document went to the frontier for that reason alone, and only those.
    assert all(r.escalated and r.escalation_reason == "unfamiliar" for r in flagged)
    assert all(r.final_stage == "frontier" for r in flagged)
    assert all(not r.escalated and r.final_stage == "slm" for r in rows if not r.unfamiliar)
    unknown = [r for r in rows if r.external_id.startswith("u")]
    assert sum(r.unfamiliar for r in unknown) >= 0.8 * len(unknown)
    assert sum(r.unfamiliar for r in rows if r.external_id.startswith("k")) <= 0.15 * len(held)
    assert view.unfamiliar == view.unfamiliar_escalated == len(flagged)
    assert view.low_confidence == 0 and view.escalated == len(flagged)
    report = json.loads(invoke("report", str(run_id), "--format", "json").stdout)
    assert report["unfamiliar"] == report["unfamiliar_escalated"] == len(flagged)
    drift = {d["measure"]: d for d in report["drift"]}["unfamiliar rate"]
    assert drift["observed"] == pytest.approx(len(flagged) / len(rows), abs=1e-4)
    assert drift["expected"] == 0.05
    assert "unfamiliar to the model" in invoke("report", str(run_id)).stdout
