"""LoRA adapter files: what is written is what is read back, in each library's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from models.training.architectures import (  # noqa: E402
    ARCHITECTURES,
    permute_rows,
    unpermute_rows,
)
from models.training.gguf_adapter import (  # noqa: E402
    gguf_lora_tensors,
    read_adapter,
    write_adapter,
)


def test_unpermute_inverts_permute() -> None:
    x = np.arange(576 * 4, dtype=np.float32).reshape(576, 4)
    assert not np.array_equal(permute_rows(x, 9), x)
    np.testing.assert_array_equal(unpermute_rows(permute_rows(x, 9), 9), x)


def test_adapter_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    state = {}
    shapes = {
        "self_attn.q_proj": (576, 576),
        "self_attn.k_proj": (192, 576),
        "mlp.down_proj": (576, 1536),
    }
    for module, (out_f, in_f) in shapes.items():
        prefix = f"base_model.model.model.layers.3.{module}"
        state[f"{prefix}.lora_A.default.weight"] = torch.from_numpy(
            rng.normal(size=(8, in_f)).astype(np.float32)
        )
        state[f"{prefix}.lora_B.default.weight"] = torch.from_numpy(
            rng.normal(size=(out_f, 8)).astype(np.float32)
        )
    path = tmp_path / "adapter.gguf"
    llama = ARCHITECTURES["llama"]
    write_adapter(path, gguf_lora_tensors(state, llama, 4, 9, 3), alpha=16, architecture="llama")
    back, alpha = read_adapter(path, llama, n_head=9, n_kv_head=3)
    assert alpha == 16
    gguf_names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "mlp.down_proj": "ffn_down",
    }
    for module in shapes:
        a, b = back[f"blk.3.{gguf_names[module]}.weight"]
        prefix = f"base_model.model.model.layers.3.{module}"
        np.testing.assert_allclose(
            a, state[f"{prefix}.lora_A.default.weight"].numpy(), rtol=1e-3, atol=1e-3
        )
        np.testing.assert_allclose(
            b, state[f"{prefix}.lora_B.default.weight"].numpy(), rtol=1e-3, atol=1e-3
        )
