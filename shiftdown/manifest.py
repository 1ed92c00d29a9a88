"""A model version's manifest, typed: what ``shiftdown finetune`` writes beside its
files, what a GGUF's ``<file>.manifest.json`` sidecar says, and what the registry keeps
with the version (``model_versions.manifest``), read and written through one class.

It lives in the core, beside the schema whose JSON column it types, because the report
reads it too (the policy's held-out figures, the fine-tune's compute time).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from shiftdown.errors import ModelError

FORMAT = "shiftdown-model/1"


class _Entry(BaseModel):
    # Entries written by a later version of this file stay on a rewrite.
    model_config = ConfigDict(extra="allow")


class BaseModelRef(_Entry):
    """The base GGUF a model was trained on: found by name along the search path
    (``models.registry.find_base``), and recognised by its hash."""

    file: str
    sha256: str | None = None
    # Where it was when the model was trained, and its GGUF architecture.
    path: str | None = None
    architecture: str | None = None


class HeldoutRef(_Entry):
    """The held-out split written beside the model (``path``: where it was found)."""

    file: str
    examples: int
    sha256: str
    path: str | None = None


class FamiliarityRef(_Entry):
    """The unfamiliarity score fitted beside the model (``models.familiarity``)."""

    file: str
    sha256: str
    method: str
    threshold: float
    false_flag_rate: float
    # Known documents the threshold was fitted on, and how they were held out.
    calibrated_on: int
    calibration: str
    bank: int
    fit_seconds: float | None = None
    path: str | None = None


class TeacherSetRef(_Entry):
    """Which teacher set the model was trained on."""

    sha256: str
    examples: int


class ModelManifest(_Entry):
    """Every entry a manifest may hold; all optional, as a bare GGUF has none."""

    # None: a hand-written sidecar or a bare GGUF's empty manifest.
    format: str | None = None
    base_model: BaseModelRef | None = None
    adapter: str | None = None
    # The Hugging Face modules the fine-tune changed (["all"]: a full fine-tune).
    adapted_modules: list[str] | None = None
    # The exported files checked against the trained model (models.training.export_check).
    export_check: dict[str, Any] | None = None
    # Merged GGUFs by kind (f16, q8_0, q4_0) and which file a model directory serves.
    merged: dict[str, str] | None = None
    serve: str | None = None
    labels: list[str] | None = None
    label_codes: list[int] | None = None
    prompt_template: str | None = None
    temperature: float | None = None
    teacher_set: TeacherSetRef | None = None
    heldout: HeldoutRef | None = None
    familiarity: FamiliarityRef | None = None
    hyperparameters: dict[str, Any] | None = None
    train_seconds: float | None = None
    command: str | None = None
    # Written after training, by calibrate, policy set, eval and retrain.
    calibration: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value != FORMAT:
            raise ValueError(f"unknown manifest format {value!r}: this shiftdown reads {FORMAT}")
        return value

    @classmethod
    def read(cls, data: Mapping[str, Any] | None, source: str = "manifest") -> ModelManifest:
        """The manifest in ``data`` (None or empty: a bare GGUF's); ``source`` names it
        in the error when it does not hold a valid one."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ModelError(f"{source}: {problems}") from exc

    @classmethod
    def load(cls, path: Path) -> ModelManifest:
        """The manifest stored as JSON in ``path``."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"unreadable manifest {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"manifest {path} is not a JSON object")
        return cls.read(data, str(path))

    def to_data(self) -> dict[str, Any]:
        """The JSON form: only the entries present, as they were read or written."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, path: Path) -> None:
        """Store the manifest as JSON in ``path``."""
        path.write_text(json.dumps(self.to_data(), indent=2) + "\n", encoding="utf-8")

    def updated(self, **entries: Any) -> ModelManifest:
        """A copy with these top-level entries set (None: removed)."""
        data = self.to_data()
        for key, value in entries.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return ModelManifest.read(data)

    @property
    def served_temperature(self) -> float:
        """The calibrated temperature serving divides logits by (1: uncalibrated)."""
        return self.temperature if self.temperature is not None else 1.0

    @property
    def fitted(self) -> dict[str, Any]:
        """The stored policy's held-out figures (empty without a policy)."""
        return dict((self.policy or {}).get("fitted") or {})
