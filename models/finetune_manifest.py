"""Checks on a fine-tuned model's manifest that serving needs without torch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shiftdown.errors import ModelError


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def teacher_hash(examples: Sequence[tuple[str, str]]) -> str:
    """Content hash of a teacher set (order-sensitive)."""
    digest = hashlib.sha256()
    for text, label in examples:
        digest.update(json.dumps([text, label]).encode())
    return digest.hexdigest()


def verify_base(base: Path, manifest: dict[str, Any]) -> None:
    """Refuse a base GGUF other than the one the adapter was trained on."""
    expected = manifest.get("base_model", {}).get("sha256")
    if expected and file_sha256(base) != expected:
        raise ModelError(
            f"{base} is not the base model the adapter was trained on (SHA-256 differs)"
        )
