"""Taxonomies: the closed list of labels a task may assign.

A taxonomy file is JSON or YAML in one of these shapes::

    ["billing", "refund"]                                  # names only
    [{"name": "billing", "description": "..."}, ...]      # names with descriptions
    {"labels": [...one of the above...]}
    {"billing": "description", "refund": "description"}   # YAML/JSON mapping
    {"labels": [...], "open_set": true}                   # an open-set task

Label names are stripped; empty or duplicate names are an error, never silently fixed.

An open-set task admits one more outcome than its labels: "none of them" (``NONE_LABEL``),
for documents that fit no label (spam, a new topic, another language). The SLM learns it as
one more answer code and the frontier may give it, but it is recorded as an outcome, never
as a label, so per-label figures never count it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shiftdown.errors import TaxonomyError

# The none outcome's name where a label would stand: in a model's label list, a teacher
# example and the frontier's answer. An open-set taxonomy may not use it as a label.
NONE_LABEL = "none"


@dataclass(frozen=True)
class Label:
    """One label and its optional human description."""

    name: str
    description: str | None = None


@dataclass(frozen=True)
class Taxonomy:
    """An ordered, duplicate-free list of labels."""

    labels: tuple[Label, ...]
    open_set: bool = False

    def __post_init__(self) -> None:
        if not self.labels:
            raise TaxonomyError("a taxonomy needs at least one label")
        if self.open_set and NONE_LABEL in (label.name for label in self.labels):
            raise TaxonomyError(
                f"an open-set taxonomy cannot have a label named {NONE_LABEL!r}: that name is "
                "its none outcome"
            )
        seen: set[str] = set()
        for position, label in enumerate(self.labels, start=1):
            if not label.name:
                raise TaxonomyError(f"label {position} is empty")
            if label.name in seen:
                raise TaxonomyError(f"label {label.name!r} appears more than once")
            seen.add(label.name)

    @property
    def names(self) -> list[str]:
        """Label names in taxonomy order."""
        return [label.name for label in self.labels]

    @property
    def outcomes(self) -> list[str]:
        """What a document may end as: the labels, then ``NONE_LABEL`` on an open-set
        task. The SLM is trained on these and the frontier answers one of them."""
        return [*self.names, NONE_LABEL] if self.open_set else self.names

    def label_of(self, outcome: str) -> str | None:
        """The label an outcome records: itself, or None for the none outcome."""
        return None if self.open_set and outcome == NONE_LABEL else outcome

    def __contains__(self, name: object) -> bool:
        return name in self.outcomes

    def with_open_set(self, open_set: bool) -> Taxonomy:
        """The same labels, open-set or closed."""
        return Taxonomy(self.labels, open_set)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hash(self) -> str:
        """A content hash of names, descriptions and openness, stable across file formats
        (a closed taxonomy hashes as it did before open sets existed)."""
        data: Any = self.to_data()
        if self.open_set:
            data = {"labels": data, "open_set": True}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def to_data(self) -> list[dict[str, str | None]]:
        """The JSON form stored with a task."""
        return [{"name": lbl.name, "description": lbl.description} for lbl in self.labels]

    @classmethod
    def from_data(cls, data: Any) -> Taxonomy:
        """Build from any of the shapes in the module docstring."""
        open_set = False
        if isinstance(data, dict) and "labels" in data:
            open_set = data.get("open_set", False)
            if not isinstance(open_set, bool):
                raise TaxonomyError("open_set must be true or false")
            data = data["labels"]
        if isinstance(data, dict):
            items: list[Any] = [{"name": k, "description": v} for k, v in data.items()]
        elif isinstance(data, list):
            items = data
        else:
            raise TaxonomyError(
                "a taxonomy is a list of labels or a mapping of label to description"
            )
        labels = []
        for position, item in enumerate(items, start=1):
            if isinstance(item, str):
                labels.append(Label(item.strip()))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                desc = item.get("description")
                if desc is not None and not isinstance(desc, str):
                    raise TaxonomyError(f"label {position}: description must be text")
                labels.append(Label(item["name"].strip(), desc.strip() if desc else None))
            else:
                raise TaxonomyError(f"label {position}: expected a name or {{name, description}}")
        return cls(tuple(labels), open_set)

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        """Read a JSON or YAML taxonomy file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise TaxonomyError(f"taxonomy {path} is not valid JSON/YAML: {exc}") from exc
        try:
            return cls.from_data(data)
        except TaxonomyError as exc:
            raise TaxonomyError(f"taxonomy {path}: {exc}") from exc
