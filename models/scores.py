"""A model's raw label logits on labelled examples, computed once through the serving
path; evaluation, calibration and the escalation policy are all derived from them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.calibration import softmax_rows
from models.classifier import Classification, Classifier


@dataclass(frozen=True)
class Scores:
    """Logits (documents by labels), gold label indices and per-document latency."""

    labels: tuple[str, ...]
    logits: npt.NDArray[np.float64]
    gold: npt.NDArray[np.intp]
    latency_ms: npt.NDArray[np.float64]
    elapsed_s: float
    # Which documents the model's familiarity score flags (None: the model has none).
    unfamiliar: npt.NDArray[np.bool_] | None = None
    # The unfamiliarity scores behind those flags.
    unfamiliarity: npt.NDArray[np.float64] | None = None

    def probs(self, temperature: float) -> npt.NDArray[np.float64]:
        """Label distributions at this temperature."""
        return softmax_rows(self.logits, temperature)

    def confidence(self, temperature: float) -> npt.NDArray[np.float64]:
        """Probability of the predicted label at this temperature."""
        result: npt.NDArray[np.float64] = self.probs(temperature).max(axis=1)
        return result

    @property
    def predicted_index(self) -> npt.NDArray[np.intp]:
        """Index of the predicted label (the temperature never changes it)."""
        return np.asarray(self.logits.argmax(axis=1), dtype=np.intp)

    @property
    def predicted(self) -> list[str]:
        """Predicted label names."""
        return [self.labels[i] for i in self.predicted_index]

    @property
    def gold_labels(self) -> list[str]:
        """Gold label names."""
        return [self.labels[i] for i in self.gold]

    def outcome_masks(self, name: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Which documents are predicted as ``name``, and which are ``name`` in truth."""
        if name not in self.labels:
            empty = np.zeros(len(self.gold), dtype=bool)
            return empty, empty
        index = self.labels.index(name)
        return np.asarray(self.predicted_index == index), np.asarray(self.gold == index)

    @property
    def correct(self) -> npt.NDArray[np.bool_]:
        """Whether each prediction matches its gold label."""
        return np.asarray(self.predicted_index == self.gold)


def score(
    clf: Classifier,
    examples: Sequence[tuple[str, str]],
    on_progress: Callable[[int], None] | None = None,
    on_result: Callable[[Classification], None] | None = None,
) -> Scores:
    """Run ``clf`` over labelled examples and keep the raw logits (``on_result`` sees
    each document's whole classification, in order)."""
    index = {label: i for i, label in enumerate(clf.labels)}
    rows: list[npt.NDArray[np.float64]] = []
    latency: list[float] = []
    flags: list[bool] = []
    values: list[float | None] = []
    scored = True
    started = time.perf_counter()
    # Chunks of one decode per batched context, so that a model loaded for batched
    # decoding (a GPU) is evaluated the way its workers serve it; with parallel 1 this is
    # one at a time.
    step = max(1, clf.options.parallel) * max(1, clf.contexts)
    texts = [text for text, _ in examples]
    for start in range(0, len(texts), step):
        results = clf.classify_many(texts[start : start + step])
        for result in results:
            if on_result:
                on_result(result)
            rows.append(result.logits)
            flags.append(result.unfamiliar)
            values.append(result.unfamiliarity)
            scored = scored and result.unfamiliarity is not None
            latency.append(result.latency_ms)
        if on_progress:
            on_progress(len(results))
    elapsed = time.perf_counter() - started
    width = len(clf.labels)
    return Scores(
        labels=tuple(clf.labels),
        logits=np.vstack(rows) if rows else np.zeros((0, width)),
        gold=np.asarray([index[label] for _, label in examples], dtype=np.intp),
        latency_ms=np.asarray(latency, dtype=np.float64),
        elapsed_s=elapsed,
        unfamiliar=np.asarray(flags, dtype=bool) if scored and flags else None,
        unfamiliarity=np.asarray(values, dtype=np.float64) if scored and flags else None,
    )
