"""GGUF export round trip: the unchanged base model, exported from PyTorch and
re-quantized by llama.cpp, reproduces the original GGUF's next-token predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama_cpp import Llama  # noqa: E402

from models.base import default_gguf_path  # noqa: E402
from models.merge import quantize  # noqa: E402
from models.training.architectures import ARCHITECTURES  # noqa: E402
from models.training.gguf_export import export_gguf  # noqa: E402
from tests.conftest import ROOT  # noqa: E402


def _top1(path: Path, tokens: list[int]) -> np.ndarray:  # type: ignore[type-arg]
    llm = Llama(str(path), n_ctx=1024, logits_all=True, n_threads=2, verbose=False)
    llm.eval(tokens)
    return np.argmax(np.asarray(llm.scores[: len(tokens)]), axis=1)


@pytest.mark.slow
def test_unchanged_base_round_trips_through_export(tmp_path: Path) -> None:
    base = default_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(base.parent), gguf_file=base.name, dtype=torch.float32
    )
    f16 = tmp_path / "base-f16.gguf"
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    export_gguf(base, model.state_dict(), f16, ARCHITECTURES["llama"], *shape)
    q41 = tmp_path / "base-q4_1.gguf"
    quantize(f16, q41, "q4_1")

    text = (ROOT / "README.md").read_text()[:2000]
    tokens = Llama(str(base), vocab_only=True, verbose=False).tokenize(text.encode())[:300]
    assert len(tokens) == 300
    original = _top1(base, tokens)
    # Same weights, same quantization: llama.cpp predicts the same next tokens.
    assert (original == _top1(q41, tokens)).mean() >= 0.99
    # The F16 export agrees with PyTorch itself on the same positions.
    with torch.no_grad():
        reference = model(torch.tensor([tokens])).logits[0].argmax(-1).numpy()
    assert (reference == _top1(f16, tokens)).mean() >= 0.99
