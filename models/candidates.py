"""Candidate narrowing: an escalated document's frontier request offers the SLM's top k
labels, not the whole taxonomy, plus a way to say "none of these".

k is chosen on held-out data for a target recall: the share of documents whose true
label is among the SLM's top k. The documents that matter are the escalated ones (the
SLM is unsure of them, so their true label sits lower in its ranking than an average
document's), so the recall is measured on the held-out documents the policy escalates
whenever there are enough of them. A document whose label was not offered costs one
more call (the whole taxonomy), never a wrong label from a frontier that answers
honestly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Below this many escalated held-out documents, k is chosen on all of them.
MIN_ESCALATED = 50
DEFAULT_TARGET_RECALL = 0.995


@dataclass(frozen=True)
class CandidateRule:
    """How many labels a narrowed request offers, and what that was measured to give."""

    k: int  # 0: the whole taxonomy (narrowing would not pay)
    target_recall: float
    recall: float  # on the documents k was chosen on
    recall_all: float  # on every held-out document
    chosen_on: str  # "escalated" or "all"
    documents: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the manifest."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateRule:
        """The rule stored by ``to_dict``."""
        return cls(
            k=int(data["k"]),
            target_recall=float(data["target_recall"]),
            recall=float(data["recall"]),
            recall_all=float(data.get("recall_all", data["recall"])),
            chosen_on=str(data.get("chosen_on", "all")),
            documents=int(data.get("documents", 0)),
        )


def gold_ranks(logits: npt.NDArray[np.float64], gold: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Each document's true label's rank in the SLM's ranking (0: its top label); a tie
    counts against the true label."""
    own = logits[np.arange(len(gold)), gold]
    ranks: npt.NDArray[np.intp] = (logits >= own[:, None]).sum(axis=1) - 1
    return ranks


def recall_curve(ranks: npt.NDArray[np.intp], n_labels: int) -> npt.NDArray[np.float64]:
    """recall[k - 1]: the share of documents whose true label is among the top k."""
    if len(ranks) == 0:
        return np.ones(n_labels)
    counts = np.bincount(ranks, minlength=n_labels)[:n_labels]
    curve: npt.NDArray[np.float64] = np.cumsum(counts) / len(ranks)
    return curve


def smallest_k(curve: npt.NDArray[np.float64], target_recall: float) -> int:
    """The smallest k whose recall reaches the target (the taxonomy's size at worst)."""
    hits = np.flatnonzero(curve >= target_recall - 1e-12)
    return int(hits[0]) + 1 if len(hits) else len(curve)


def choose_candidates(
    logits: npt.NDArray[np.float64],
    gold: npt.NDArray[np.intp],
    escalated: npt.NDArray[np.bool_],
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> CandidateRule:
    """The rule for held-out ``logits`` and ``gold`` under a policy that escalates
    ``escalated``: the smallest k reaching ``target_recall`` on the escalated documents
    (on all of them when fewer than ``MIN_ESCALATED`` escalate). A k that is most of the
    taxonomy saves little and risks a second call: the whole taxonomy then (k = 0)."""
    n_labels = logits.shape[1]
    ranks = gold_ranks(logits, gold)
    on_escalated = int(escalated.sum()) >= MIN_ESCALATED
    chosen = ranks[escalated] if on_escalated else ranks
    curve = recall_curve(chosen, n_labels)
    k = smallest_k(curve, target_recall)
    if k > n_labels // 2:
        k = 0
    return CandidateRule(
        k=k,
        target_recall=target_recall,
        recall=float(curve[k - 1]) if k else 1.0,
        recall_all=float(recall_curve(ranks, n_labels)[k - 1]) if k else 1.0,
        chosen_on="escalated" if on_escalated else "all",
        documents=len(chosen),
    )


def top_candidates(distribution: dict[str, float] | None, k: int) -> list[str] | None:
    """The ``k`` most probable labels of a stored SLM distribution, or None (the whole
    taxonomy) when narrowing is off or the distribution holds fewer than ``k`` labels.
    Sorted here: Postgres's jsonb does not keep the order the worker wrote."""
    if not k or not distribution or len(distribution) < k:
        return None
    ranked = sorted(distribution.items(), key=lambda item: (-item[1], item[0]))
    return [label for label, _ in ranked[:k]]
