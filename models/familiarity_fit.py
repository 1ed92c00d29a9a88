"""Fit a model directory's unfamiliarity score (``models.familiarity``) from its own
forward passes over the documents it was trained on and the split it held out, and
store it beside the model: ``familiarity.npz``, named with its hash in the manifest.

``shiftdown finetune`` and ``retrain`` call it once a model is trained;
``shiftdown familiarity fit`` does it for a model trained before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.familiarity import (
    DEFAULT_FALSE_FLAG_RATE,
    DEFAULT_METHOD,
    FAMILIARITY_FILE,
    MAX_BANK,
    Familiarity,
    Method,
    fit,
    sampled,
)
from models.finetune_manifest import file_sha256
from models.hidden_state import every_blas_thread
from models.registry import load_model_dir
from shiftdown.errors import ModelError
from shiftdown.manifest import FamiliarityRef, ModelManifest
from shiftdown.settings import get_settings


def fit_runtime_options() -> RuntimeOptions:
    """The machine's runtime options (``SHIFTDOWN_*``), decoding at least 8 documents
    together: a fit scores the whole training set."""
    options = RuntimeOptions.from_settings(get_settings())
    return replace(options, parallel=max(8, options.parallel))


def hidden_states(
    clf: Classifier, texts: Sequence[str], on_progress: Callable[[int], None] | None = None
) -> npt.NDArray[np.float32]:
    """The final hidden states of each text at ``clf.state_positions`` positions, side by
    side (documents x positions * width)."""
    clf.hidden_states = True
    rows: list[npt.NDArray[np.float32]] = []
    step = max(1, clf.options.parallel) * 4
    for start in range(0, len(texts), step):
        for result in clf.classify_many(texts[start : start + step]):
            assert result.hidden is not None
            rows.append(result.hidden)
        if on_progress:
            on_progress(min(step, len(texts) - start))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def unscored_classifier(model_dir: Path, options: RuntimeOptions) -> Classifier:
    """The model as workers serve it, without any familiarity file it already has."""
    gguf, adapter, manifest = load_model_dir(model_dir)
    labels = tuple(manifest.labels or ())
    if not labels:
        raise ModelError(f"{model_dir} names no labels: only a fine-tuned model can be fitted")
    spec = ModelSpec(str(gguf), labels, str(adapter) if adapter else None, manifest)
    return Classifier(spec, replace(options, familiarity=False))


def fit_model_dir(
    model_dir: Path,
    train: Sequence[tuple[str, str]],
    heldout: Sequence[tuple[str, str]],
    options: RuntimeOptions,
    method: Method = DEFAULT_METHOD,
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
    on_progress: Callable[[int], None] | None = None,
) -> FamiliarityRef:
    """Fit the score on ``train`` (the documents the model learnt from, with their
    labels, none included) and its threshold on ``heldout``; write it beside the model
    and name it in the manifest. Returns the manifest's entry."""
    if not train:
        raise ModelError("no training documents to fit a familiarity score on")
    if method == "knn" and len(train) > MAX_BANK:
        # The bank keeps a seeded sample: drawn before decoding, the same one ``fit``
        # would keep afterwards, so the rest are never decoded.
        train = [train[i] for i in sampled(len(train), MAX_BANK, 0)]
    clf = unscored_classifier(model_dir, options)
    started = time.perf_counter()
    train_states = hidden_states(clf, [t for t, _ in train], on_progress)
    held_states = hidden_states(clf, [t for t, _ in heldout], on_progress) if heldout else None
    # The decoding is done: the fit's products may use every core again.
    with every_blas_thread():
        score = fit(
            method,
            train_states,
            [label for _, label in train],
            held_states,
            false_flag_rate,
            positions=clf.state_positions,
        )
    return store(model_dir, score, time.perf_counter() - started)


def store(model_dir: Path, score: Familiarity, seconds: float = 0.0) -> FamiliarityRef:
    """Write ``score`` beside the model in ``model_dir`` and name it in its manifest."""
    path = model_dir / FAMILIARITY_FILE
    score.save(path)
    ref = FamiliarityRef(
        file=FAMILIARITY_FILE,
        sha256=file_sha256(path),
        method=score.method,
        threshold=score.threshold,
        false_flag_rate=score.false_flag_rate,
        calibrated_on=score.calibrated_on,
        calibration=score.calibration,
        bank=len(score.bank) if score.bank is not None else 0,
        fit_seconds=round(seconds, 1),
    )
    manifest_path = model_dir / "manifest.json"
    manifest = ModelManifest.load(manifest_path)
    manifest.updated(familiarity=ref.model_dump(exclude_none=True)).write(manifest_path)
    return ref
