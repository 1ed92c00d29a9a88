"""Temperature scaling (Guo et al., 2017): one scalar T divides the label logits so that
the served confidence matches the accuracy actually observed on held-out data.

One parameter cannot overfit a few hundred held-out examples and never changes which
label wins, so accuracy and the confidence ranking (and thus accuracy at any coverage)
stay exactly as they were; only the confidence values move.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

# Search range for T: beyond it a model is not miscalibrated, it is broken.
T_MIN, T_MAX = 0.05, 20.0


def softmax_rows(logits: npt.NDArray[np.float64], temperature: float) -> npt.NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def nll(logits: npt.NDArray[np.float64], gold: npt.NDArray[np.intp], temperature: float) -> float:
    """Mean negative log-likelihood of the gold labels at this temperature."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(gold)), gold]))


def fit_temperature(logits: npt.NDArray[np.float64], gold: npt.NDArray[np.intp]) -> float:
    """The temperature minimising held-out NLL (golden-section search on log T).

    NLL is unimodal in log T for a fixed set of logits, so the search needs no
    derivatives and no optimiser dependency.
    """
    if len(gold) == 0:
        raise ValueError("no held-out examples to calibrate on")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, gold, math.exp(a)), nll(logits, gold, math.exp(b))
    while hi - lo > 1e-4:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, gold, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, gold, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)
