"""The read-back of hidden states from logits (``models.hidden_state.OutputInverse``) on
GGUF files written here: only the kept rows are dequantized, a poorly conditioned
choice of rows is refused, and a familiarity file of another width is refused when the
model loads, not on every decode."""

from __future__ import annotations

import shutil
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
