"""The unfamiliarity score on large models and large teacher sets: the read-back of
hidden states from logits (``models.hidden_state.OutputInverse``) on GGUF files written
here (only the kept rows dequantized, a poorly conditioned choice of rows refused), a
familiarity file of another width refused when the model loads, the fit's bank sampled
before decoding and fitted on every BLAS thread, scoring in chunks, and ``policy set``'s
unfamiliar rate measured out of sample."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.familiarity import fit
from models.familiarity_fit import store
from models.hidden_state import MIN_SINGULAR_RATIO, OutputInverse
from models.registry import load_model_dir
from shiftdown.errors import ModelError


def write_output_matrix(path: Path, weight: npt.NDArray[np.float32], qtype: str = "F32") -> Path:
    """A GGUF holding only an output matrix (vocabulary x width) in ``qtype``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    kind = gguf.GGMLQuantizationType[qtype]
    data = weight if qtype == "F32" else gguf.quants.quantize(weight, kind)
    writer.add_tensor("output.weight", data, raw_dtype=None if qtype == "F32" else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_states_are_read_back_from_the_kept_rows_of_a_quantized_matrix(tmp_path: Path) -> None:
    import gguf

    rng = np.random.default_rng(0)
    n_vocab, width = 6000, 64
    weight = rng.standard_normal((n_vocab, width)).astype(np.float32)
    path = write_output_matrix(tmp_path / "q8.gguf", weight, "Q8_0")
    inverse = OutputInverse(path, n_vocab)
    assert inverse.width == width and len(inverse.rows) == 4096
    assert inverse.singular_ratio >= MIN_SINGULAR_RATIO
    # The same rows as dequantizing the whole matrix, which it no longer does.
    (tensor,) = gguf.GGUFReader(str(path)).tensors
    whole = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(n_vocab, width)
    h = rng.standard_normal((3, width)).astype(np.float32)
    logits = h @ whole.T
    got = inverse.states(logits[:, inverse.rows])
    np.testing.assert_allclose(got, h, rtol=0, atol=1e-3 * np.abs(h).max())


def test_a_poorly_conditioned_output_matrix_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n_vocab, width = 5000, 32
    # Full rank, but its last direction a millionth of the others: float32 logits would
    # read states back far off along it.
    scale = np.ones(width, dtype=np.float32)
    scale[-1] = 1e-6
    weight = (rng.standard_normal((n_vocab, width)) * scale).astype(np.float32)
    assert np.linalg.matrix_rank(weight.astype(np.float64)) == width  # the old test passed
    path = write_output_matrix(tmp_path / "ill.gguf", weight)
    with pytest.raises(ModelError, match="poorly conditioned"):
        OutputInverse(path, n_vocab)


def test_a_familiarity_file_of_another_width_is_refused_at_load(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny["dir"], copy)
    rng = np.random.default_rng(2)
    # Fitted on states ten wide: no model's hidden state.
    score = fit("knn", rng.standard_normal((40, 10)), ["a", "b"] * 20)
    store(copy, score)
    gguf, adapter, manifest = load_model_dir(copy)
    spec = ModelSpec(str(gguf), tuple(manifest.labels or ()), str(adapter), manifest)
    with pytest.raises(ModelError, match="fitted on states of width 10"):
        Classifier(spec, RuntimeOptions(n_threads=2, parallel=8))


def test_policy_set_measures_the_unfamiliar_rate_out_of_sample_and_bounds_it(
    tiny: dict[str, Any],
    tmp_path: Path,
    use_settings: Callable[..., None],
    sqlite_url: str,
) -> None:
    from sqlalchemy import select

    from models.familiarity_fit import fit_model_dir
    from models.finetune_manifest import write_heldout
    from shiftdown.db import session_scope
    from shiftdown.manifest import ModelManifest
    from shiftdown.schema import ModelVersion
    from tests.helpers import invoke

    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_N_THREADS="2")
    copy = tmp_path / "model"
    shutil.copytree(tiny["dir"], copy)
    # As finetune does with a validation split: the score's threshold is fitted on the
    # held-out split, which policy set then reads by default.
    held = tiny["held_out"]
    fit_model_dir(copy, tiny["train"], held, RuntimeOptions(n_threads=2, parallel=8), "knn", 0.3)
    ref = write_heldout(copy, held)
    manifest = ModelManifest.load(copy / "manifest.json")
    manifest.updated(heldout=ref.model_dump(exclude_none=True)).write(copy / "manifest.json")
    target = 0.6
    shown = invoke(
        "policy", "set", "--task", "tiny", "--taxonomy", str(tiny["taxonomy"]),
        "--model", str(copy), "--max-escalation", str(target), "--candidate-recall", "0",
    ).output  # fmt: skip
    with session_scope() as s:
        fitted = s.scalars(select(ModelVersion.manifest)).one()["policy"]["fitted"]
    # In sample the flags are 30 % by construction; each half is flagged by a threshold
    # fitted on the other half instead.
    assert fitted["unfamiliar_rate_basis"].startswith("2-fold"), fitted
    assert "2-fold" in shown
    # The bound counts the unfamiliar escalations with the thresholds' own, and the
    # target holds for the two together.
    assert fitted["escalation_rate"] >= fitted["unfamiliar_rate"]
    assert fitted["escalation_rate_upper_95"] <= target + 1e-6


def test_scoring_a_large_held_out_set_holds_one_chunk_of_similarities_at_a_time() -> None:
    import tracemalloc

    from models.familiarity import MAX_BANK, SCORE_CHUNK

    rng = np.random.default_rng(3)
    bank = rng.standard_normal((MAX_BANK, 32)).astype(np.float32)
    score = fit("knn", bank, ["a", "b"] * (MAX_BANK // 2))
    held = rng.standard_normal((4000, 32)).astype(np.float32)
    tracemalloc.start()
    got = score.scores(held)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # One chunk's similarities (256 x 20,000 float32, 20 MB), not the whole 320 MB.
    whole = len(held) * MAX_BANK * 4
    assert peak < 3 * SCORE_CHUNK * MAX_BANK * 4 < whole / 4, peak
    # The same scores as the whole product.
    z = held / np.linalg.norm(held, axis=1, keepdims=True)
    assert score.bank is not None
    expected = 1.0 - (z @ score.bank.T).max(axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_fit_samples_its_bank_before_decoding_and_uses_every_blas_thread(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from threadpoolctl import threadpool_info

    import models.familiarity_fit as familiarity_fit
    from models.familiarity_fit import fit_model_dir

    copy = tmp_path / "model"
    shutil.copytree(tiny["dir"], copy)
    bank = 25
    assert len(tiny["train"]) > 2 * bank
    monkeypatch.setattr(familiarity_fit, "MAX_BANK", bank)
    threads: list[int] = []
    real_fit = familiarity_fit.fit

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(familiarity_fit, "fit", spy)
    decoded: list[int] = []
    held = tiny["held_out"][:30]
    options = RuntimeOptions(n_threads=2, parallel=8)
    ref = fit_model_dir(copy, tiny["train"], held, options, "knn", 0.1, decoded.append)
    # Only the bank's sample and the held-out documents went through the model.
    assert sum(decoded) == bank + len(held)
    assert ref.bank == bank
    # Decoding keeps BLAS to one thread; the fit, after it, has every core.
    assert threads == [os.cpu_count()]
    assert max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas") == 1
