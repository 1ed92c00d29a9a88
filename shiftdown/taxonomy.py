"""Taxonomies: the closed list of labels a task may assign.

A taxonomy file is JSON or YAML in one of these shapes::

    ["billing", "refund"]                                  # names only
    [{"name": "billing", "description": "..."}, ...]      # names with descriptions
    {"labels": [...one of the above...]}
    {"billing": "description", "refund": "description"}   # YAML/JSON mapping

Label names are stripped; empty or duplicate names are an error, never silently fixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shiftdown.errors import TaxonomyError


@dataclass(frozen=True)
class Label:
    """One label and its optional human description."""

    name: str
    description: str | None = None


@dataclass(frozen=True)
class Taxonomy:
    """An ordered, duplicate-free list of labels."""

    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise TaxonomyError("a taxonomy needs at least one label")
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

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hash(self) -> str:
        """A content hash of names and descriptions, stable across file formats."""
        return hashlib.sha256(json.dumps(self.to_data(), sort_keys=True).encode()).hexdigest()

    def to_data(self) -> list[dict[str, str | None]]:
        """The JSON form stored with a task."""
        return [{"name": lbl.name, "description": lbl.description} for lbl in self.labels]

    @classmethod
    def from_data(cls, data: Any) -> Taxonomy:
        """Build from any of the shapes in the module docstring."""
        if isinstance(data, dict) and "labels" in data:
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
        return cls(tuple(labels))

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
