"""A tiny task learned on CPU with LoRA, exported as a GGUF adapter, and served through
the real llama.cpp path on top of the quantized base."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("peft")

from cli.main import cli
from models.base import default_gguf_path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.registry import load_model_dir
from models.served import find_merged
from shiftdown.manifest import ModelManifest
from shiftdown.settings import DEFAULT_SERVE_TYPE
from shiftdown.taxonomy import Taxonomy
from tests.conftest import LABELS
from tests.helpers import final_labels


@pytest.mark.slow
def test_tiny_task_is_learned_and_served_by_llama_cpp(tiny: dict[str, object]) -> None:
    base, adapter, manifest = load_model_dir(tiny["dir"])  # type: ignore[arg-type]
    assert base == default_gguf_path() and adapter is not None
    assert adapter.stat().st_size < 10 * 1024 * 1024
    assert manifest.labels == LABELS and len(set(manifest.label_codes or [])) == 4
    assert manifest.teacher_set and manifest.teacher_set.examples == len(tiny["train"])  # type: ignore[arg-type]
    spec = spec_for_dir(base, adapter, manifest)
    clf = Classifier(spec, RuntimeOptions(n_ctx=512, n_threads=2, serve_type="adapter"))
    held_out: list[tuple[str, str]] = tiny["held_out"]  # type: ignore[assignment]
    correct = sum(clf.classify(text).label == label for text, label in held_out)
    accuracy = correct / len(held_out)
    assert len(held_out) >= 40 and accuracy >= 0.9, accuracy

    # finetune made the merged form it is served in (Q8_0 by default, no torch), and a
    # Classifier given the model loads that file: it has learned the task as well.
    merged = find_merged(base, adapter, DEFAULT_SERVE_TYPE)
    assert merged is not None and merged.parent == Path(tiny["dir"]) / ".served"  # type: ignore[operator]
    served = Classifier(spec, RuntimeOptions(n_ctx=512, n_threads=2))
    assert served.served_path == str(merged)
    assert sum(served.classify(t).label == lbl for t, lbl in held_out) / len(held_out) >= 0.9

    # Without the adapter the same base model is far worse: the adapter carries the task.
    bare = Classifier(spec_for_dir(base, None, manifest), RuntimeOptions(n_ctx=512, n_threads=2))
    bare_correct = sum(bare.classify(text).label == label for text, label in held_out)
    assert bare_correct < correct


def spec_for_dir(base: Path, adapter: Path | None, manifest: ModelManifest) -> ModelSpec:
    return ModelSpec(str(base), tuple(LABELS), str(adapter) if adapter else None, manifest)


@pytest.mark.slow
def test_fine_tuned_model_runs_in_the_pipeline(
    tiny: dict[str, object],
    use_settings: Callable[..., None],
    sqlite_url: str,
    write_jsonl: Callable[..., Path],
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_THRESHOLD="0.0")
    held_out: list[tuple[str, str]] = tiny["held_out"]  # type: ignore[assignment]
    path = write_jsonl([{"id": str(i), "text": t} for i, (t, _) in enumerate(held_out)])
    result = CliRunner().invoke(
        cli, ["run", str(path), "--taxonomy", str(tiny["taxonomy"]), "--model", str(tiny["dir"])]
    )
    assert result.exit_code == 0, result.output
    labels = final_labels(1)
    correct = sum(labels[str(i)][0] == label for i, (_, label) in enumerate(held_out))
    assert correct / len(held_out) >= 0.9


def test_a_model_for_other_labels_is_refused(
    tiny: dict[str, object],
    use_settings: Callable[..., None],
    sqlite_url: str,
    write_jsonl: Callable[..., Path],
    banking_taxonomy: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    path = write_jsonl([{"text": "hello"}])
    result = CliRunner().invoke(
        cli, ["run", str(path), "--taxonomy", str(banking_taxonomy), "--model", str(tiny["dir"])]
    )
    assert result.exit_code != 0
    assert "trained for 4 labels that differ" in result.output


def test_unknown_teacher_labels_are_refused(tmp_path: Path) -> None:
    from models.teacher import read_labelled
    from shiftdown.errors import RecordError

    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,card_arrival\nbye,nonsense\n,card_arrival\n")
    with pytest.raises(RecordError, match=r"line 3: label 'nonsense'.*line 4: no text"):
        read_labelled(path, "text", "label", Taxonomy.from_data(LABELS))
