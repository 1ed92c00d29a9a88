"""Checks on a fine-tuned model's manifest that serving needs without torch."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from shiftdown.manifest import HeldoutRef

_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks; remembered per (path, size, mtime) for the
    process's life, since the base is checked and then named by its hash on each load."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def teacher_hash(examples: Sequence[tuple[str, str]]) -> str:
    """Content hash of a teacher set (order-sensitive)."""
    digest = hashlib.sha256()
    for text, label in examples:
        digest.update(json.dumps([text, label]).encode())
    return digest.hexdigest()


HELDOUT_FILE = "heldout.csv"


def write_heldout(out_dir: Path, examples: Sequence[tuple[str, str]]) -> HeldoutRef:
    """Write the held-out split beside the model (text,label CSV); its manifest entry.

    Calibration and the escalation policy are fitted on it: data the model never saw.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / HELDOUT_FILE).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(examples)
    return HeldoutRef(file=HELDOUT_FILE, examples=len(examples), sha256=teacher_hash(examples))
