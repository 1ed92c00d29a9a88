"""How unlike the training set a document is: a distance in the model's own final hidden
states (after the last norm, at the position the label codes are read and the one before
it), from the forward pass that classifies it.

A fine-tuned classifier is sure and wrong on a topic nobody taught it: the softmax over
its labels says nothing about whether the document resembles anything it was trained
on, but the hidden state does. Two scores from the out-of-distribution literature, both
on L2-normalised states:

- ``knn``: one minus the cosine similarity to the k-th nearest training document
  (Sun et al., 2022), over a bank of the training set's states;
- ``mahalanobis``: the smallest Mahalanobis distance to a label's mean under one shared
  covariance (Lee et al., 2018), shrunk by Ledoit-Wolf because a few thousand states
  cannot estimate a full covariance of their dimension.

Fitted with no unknown data: the threshold is the score that flags a target share
(default 5 %) of known documents the bank never held: the held-out split, or without
one, training documents scored out of fold (cross-fitting, so that no training document
is its own neighbour). Teacher examples answered "none" are one more group of the bank:
a document like them is a none the model was taught, not an unfamiliar one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from shiftdown.errors import ModelError

Floats = npt.NDArray[np.float64]
Method = Literal["knn", "mahalanobis"]
METHODS: tuple[Method, ...] = ("knn", "mahalanobis")
# The score fitted by default; docs/open-set.md gives the measurement behind it.
DEFAULT_METHOD: Method = "knn"
FAMILIARITY_FILE = "familiarity.npz"
DEFAULT_FALSE_FLAG_RATE = 0.05
# kNN over more than this many states is sampled down (seeded): the
# score's cost per document grows with the bank, its quality hardly past a few thousand.
MAX_BANK = 20_000


def normalised(states: npt.ArrayLike, positions: int = 1) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (float32). A row of ``positions`` states side by side
    has each scaled to unit length first, so that its cosine with another row is the
    mean of the positions' cosines: no position outweighs another by its norm."""
    x = np.asarray(states, dtype=np.float32)
    n, width = x.shape
    if width % positions:
        raise ModelError(f"rows of {width} values do not hold {positions} states side by side")
    blocks = x.reshape(n, positions, width // positions)
    blocks = blocks / np.maximum(np.linalg.norm(blocks, axis=2, keepdims=True), 1e-12)
    result: npt.NDArray[np.float32] = blocks.reshape(n, width) / np.float32(np.sqrt(positions))
    return result


def ledoit_wolf(centered: Floats) -> Floats:
    """The Ledoit-Wolf shrunk covariance of already-centred rows: the sample covariance
    pulled toward a scaled identity by the amount that minimises the expected error."""
    n, d = centered.shape
    sample = centered.T @ centered / n
    mu = float(np.trace(sample)) / d
    delta = float(((sample - mu * np.eye(d)) ** 2).sum()) / d
    sq = centered**2
    beta = float((sq.T @ sq).sum() / n - (sample**2).sum()) / (d * n)
    shrink = min(1.0, beta / delta) if delta > 0 else 1.0
    result: Floats = (1 - shrink) * sample + shrink * mu * np.eye(d)
    return result


# Rows scored at a time (a knn chunk's similarities: 256 x 20,000 float32, 20 MB).
SCORE_CHUNK = 256


@dataclass(frozen=True)
class Familiarity:
    """A fitted unfamiliarity score and its threshold (above it: unfamiliar)."""

    method: Method
    threshold: float
    # How many positions' states a row holds, the answer position last (a file fitted
    # before there were two holds one).
    positions: int = 1
    # knn: the bank of normalised training states and which neighbour counts.
    bank: npt.NDArray[np.float32] | None = None
    k: int = 1
    # mahalanobis: the label means and the states, whitened by the shared precision.
    whitening: npt.NDArray[np.float32] | None = None
    means: npt.NDArray[np.float32] | None = None
    # What the threshold was fitted for, on how many known documents and how.
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE
    calibrated_on: int = 0
    calibration: str = "heldout"

    @property
    def dim(self) -> int:
        """The width of the rows this score was fitted on (every position's state)."""
        source = self.bank if self.method == "knn" else self.whitening
        assert source is not None
        return int(source.shape[1] if self.method == "knn" else source.shape[0])

    def scores(self, states: npt.ArrayLike) -> Floats:
        """Each state's unfamiliarity: higher, less like the training set."""
        z = np.asarray(states, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ModelError(
                f"the familiarity file was fitted on states of width {self.dim}, "
                f"this model gives {z.shape[-1]}: fit it again for this model"
            )
        z = normalised(z, self.positions)
        # In chunks of rows: a held-out set scored against a bank of 20,000 states would
        # otherwise hold a (documents x bank) matrix at once.
        out = np.empty(len(z), dtype=np.float64)
        for start in range(0, len(z), SCORE_CHUNK):
            out[start : start + SCORE_CHUNK] = self._scores(z[start : start + SCORE_CHUNK])
        return out

    def _scores(self, z: npt.NDArray[np.float32]) -> Floats:
        if self.method == "knn":
            assert self.bank is not None
            sims = z @ self.bank.T
            n = sims.shape[1]
            k = min(self.k, n)
            # The k-th most similar, partitioned in place (no negated copy).
            sims.partition(n - k, axis=1)
            return np.asarray(1.0 - sims[:, n - k], dtype=np.float64)
        assert self.whitening is not None and self.means is not None
        w = z @ self.whitening
        # Squared distances to every mean, without a (documents x means x dim) array.
        d2 = (w**2).sum(axis=1)[:, None] - 2.0 * w @ self.means.T + (self.means**2).sum(axis=1)
        return np.asarray(d2.min(axis=1), dtype=np.float64)

    def unfamiliar(self, states: npt.ArrayLike) -> tuple[Floats, npt.NDArray[np.bool_]]:
        """The scores and which of them pass the threshold."""
        s = self.scores(states)
        return s, np.asarray(s > self.threshold)

    def save(self, path: Path) -> None:
        """Write the score to ``path`` (npz; written aside and renamed)."""
        arrays = {
            "method": np.asarray(self.method),
            "threshold": np.asarray(self.threshold),
            "positions": np.asarray(self.positions),
            "k": np.asarray(self.k),
            "false_flag_rate": np.asarray(self.false_flag_rate),
            "calibrated_on": np.asarray(self.calibrated_on),
            "calibration": np.asarray(self.calibration),
        }
        if self.bank is not None:
            # Half precision: cosine similarities move by about 1e-3, the file halves.
            arrays["bank"] = self.bank.astype(np.float16)
        if self.whitening is not None and self.means is not None:
            arrays["whitening"] = self.whitening
            arrays["means"] = self.means
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Familiarity:
        """The score stored in ``path``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                method = str(data["method"])
                if method not in METHODS:
                    raise ModelError(f"{path}: unknown familiarity method {method!r}")
                return cls(
                    method=method,
                    threshold=float(data["threshold"]),
                    positions=int(data["positions"]) if "positions" in data else 1,
                    bank=data["bank"].astype(np.float32) if "bank" in data else None,
                    k=int(data["k"]),
                    whitening=data.get("whitening", None),
                    means=data.get("means", None),
                    false_flag_rate=float(data["false_flag_rate"]),
                    calibrated_on=int(data["calibrated_on"]),
                    calibration=str(data["calibration"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"unreadable familiarity file {path}: {exc}") from exc


def sampled(n: int, limit: int, seed: int) -> npt.NDArray[np.intp]:
    """Indices of at most ``limit`` of ``n`` rows, a seeded uniform sample in order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _unfitted(
    method: Method,
    states: npt.NDArray[np.float32],
    labels: Sequence[str],
    k: int,
    positions: int = 1,
) -> Familiarity:
    """The score over these (normalised) training states, its threshold not yet set."""
    if method == "knn":
        return Familiarity("knn", np.inf, positions, bank=states, k=k)
    groups = sorted(set(labels))
    index = np.asarray([groups.index(g) for g in labels])
    x = states.astype(np.float64)
    means = np.stack([x[index == i].mean(axis=0) for i in range(len(groups))])
    cov = ledoit_wolf(x - means[index])
    # Whitening by the inverse Cholesky factor: distances become Euclidean.
    chol = np.linalg.cholesky(cov)
    whitening = np.linalg.inv(chol).T
    return Familiarity(
        "mahalanobis",
        np.inf,
        positions,
        whitening=whitening.astype(np.float32),
        means=(means @ whitening).astype(np.float32),
    )


def crossfit_flags(
    scores: npt.ArrayLike, false_flag_rate: float, folds: int = 2, seed: int = 0
) -> npt.NDArray[np.bool_]:
    """Which documents a threshold fitted for ``false_flag_rate`` on the *other* folds
    flags: the unfamiliar rate of unseen known documents, where the stored threshold
    was fitted on these very documents (and so flags ``false_flag_rate`` of them by
    construction)."""
    values = np.asarray(scores, dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(len(values)) % folds
    flags = np.zeros(len(values), dtype=bool)
    for f in range(folds):
        inside = fold != f
        if not inside.any():
            continue
        threshold = np.quantile(values[inside], 1.0 - false_flag_rate, method="higher")
        flags[~inside] = values[~inside] > threshold
    return flags


def crossfit_scores(
    method: Method,
    states: npt.NDArray[np.float32],
    labels: Sequence[str],
    k: int = 1,
    folds: int = 5,
    seed: int = 0,
    positions: int = 1,
) -> Floats:
    """Each training state's score under a score fitted without its fold."""
    fold = np.random.default_rng(seed).permutation(len(states)) % folds
    out = np.empty(len(states))
    lab = np.asarray(labels)
    for f in range(folds):
        inside = fold != f
        score = _unfitted(method, states[inside], list(lab[inside]), k, positions)
        out[~inside] = score.scores(states[~inside])
    return out


def fit(
    method: Method,
    train_states: npt.ArrayLike,
    train_labels: Sequence[str],
    heldout_states: npt.ArrayLike | None = None,
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
    k: int = 1,
    seed: int = 0,
    positions: int = 1,
) -> Familiarity:
    """Fit the score on the training states and its threshold for ``false_flag_rate``
    on known documents the bank does not hold: ``heldout_states`` when given (at least
    20 of them), else the training states scored out of fold. Each row holds the states
    of ``positions`` positions side by side (``Classifier.state_positions``)."""
    if not 0 < false_flag_rate < 1:
        raise ModelError(f"the false-flag rate must be between 0 and 1, not {false_flag_rate}")
    states = normalised(train_states, positions)
    # kNN needs a bank to be near; Mahalanobis a mean per label and a covariance.
    least = 20 if method == "knn" else max(20, 2 * len(set(train_labels)))
    if len(states) < least:
        raise ModelError(
            f"{len(states)} training documents are too few to fit a {method} familiarity "
            f"score (at least {least})"
        )
    if method == "knn":
        keep = sampled(len(states), MAX_BANK, seed)
        states, train_labels = states[keep], [train_labels[i] for i in keep]
    held = None if heldout_states is None else np.asarray(heldout_states, dtype=np.float32)
    score = _unfitted(method, states, train_labels, k, positions)
    if held is not None and len(held) >= 20:
        calib, how = score.scores(held), "heldout"
    else:
        calib = crossfit_scores(method, states, train_labels, k, seed=seed, positions=positions)
        how = "crossfit"
    threshold = float(np.quantile(calib, 1.0 - false_flag_rate, method="higher"))
    return Familiarity(
        method=method,
        threshold=threshold,
        positions=positions,
        bank=score.bank,
        k=k,
        whitening=score.whitening,
        means=score.means,
        false_flag_rate=false_flag_rate,
        calibrated_on=len(calib),
        calibration=how,
    )
