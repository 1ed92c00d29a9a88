"""Drift: a run whose escalation rate, or whose SLM-frontier agreement on audited
documents, moves away from what the model showed on held-out data (or, without a
stored policy, from the same model's earlier runs)."""

from __future__ import annotations

from dataclasses import dataclass

# Below this many documents a rate is too noisy to flag (its standard error at p = 0.1
# is already 0.04).
MIN_DOCUMENTS = 50


@dataclass(frozen=True)
class DriftCheck:
    """One measure against its reference."""

    measure: str
    observed: float | None
    expected: float | None
    documents: int
    band: float
    basis: str

    @property
    def flagged(self) -> bool:
        """True when the measure is outside the band around its reference."""
        if self.observed is None or self.expected is None or self.documents < MIN_DOCUMENTS:
            return False
        return abs(self.observed - self.expected) > self.band

    def message(self) -> str:
        """One sentence for the report."""
        if self.observed is None:
            return f"{self.measure}: nothing measured in this run"
        seen = f"{self.measure} {100 * self.observed:.1f} %"
        if self.expected is None:
            # A basis that already says why there is nothing to compare reads as is.
            why = self.basis if self.basis.startswith("no ") else f"no reference ({self.basis})"
            return f"{seen}, {why}"
        if self.documents < MIN_DOCUMENTS:
            return (
                f"{seen} on {self.documents} documents, too few to judge drift "
                f"(at least {MIN_DOCUMENTS} needed)"
            )
        verdict = "DRIFT" if self.flagged else "steady"
        return (
            f"{seen} against {100 * self.expected:.1f} % expected ({self.basis}, "
            f"band ±{100 * self.band:.1f} points): {verdict}"
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready figures."""
        return {
            "measure": self.measure,
            "observed": None if self.observed is None else round(self.observed, 4),
            "expected": None if self.expected is None else round(self.expected, 4),
            "documents": self.documents,
            "band": self.band,
            "basis": self.basis,
            "flagged": self.flagged,
            "message": self.message(),
        }
