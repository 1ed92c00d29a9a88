"""The typed model manifest: one reader and one writer for every layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shiftdown.errors import ModelError
from shiftdown.manifest import FORMAT, HeldoutRef, ModelManifest


def test_a_written_manifest_reads_back_the_same(tmp_path: Path) -> None:
    manifest = ModelManifest(
        format=FORMAT,
        adapter="adapter.gguf",
        labels=["a", "b"],
        label_codes=[10, 11],
        heldout=HeldoutRef(file="heldout.csv", examples=2, sha256="ab"),
        policy={"threshold": 0.5, "fitted": {"escalation_rate": 0.1}},
        train_seconds=3.5,
    )
    path = tmp_path / "manifest.json"
    manifest.write(path)
    # Entries never set are not written: the file holds what the writer said.
    assert "merged" not in json.loads(path.read_text())
    read = ModelManifest.load(path)
    assert read == manifest and read.fitted == {"escalation_rate": 0.1}
    assert read.served_temperature == 1.0


def test_an_entry_of_a_newer_writer_is_kept_on_update() -> None:
    stored = {"format": FORMAT, "labels": ["a"], "tokenizer_hash": "x"}
    updated = ModelManifest.read(stored).updated(temperature=1.7, labels=None)
    assert updated.to_data() == {"format": FORMAT, "tokenizer_hash": "x", "temperature": 1.7}


def test_a_bare_gguf_has_an_empty_manifest() -> None:
    assert ModelManifest.read(None).to_data() == {}
    assert ModelManifest.read({}).policy is None


def test_an_unknown_format_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "shiftdown-model/9", "labels": ["a"]}))
    with pytest.raises(ModelError, match=r"unknown manifest format 'shiftdown-model/9'"):
        ModelManifest.load(path)


def test_a_mistyped_entry_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"sidecar: label_codes\.0: .*integer"):
        ModelManifest.read({"label_codes": ["seven"]}, "sidecar")
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ModelError, match="not a JSON object"):
        ModelManifest.load(listed)
