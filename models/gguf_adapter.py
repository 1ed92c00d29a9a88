"""Write a LoRA adapter trained in PyTorch as a GGUF adapter that llama.cpp loads on top
of a (quantized) base model.

Two conventions differ between Hugging Face and GGUF llama models: tensor names, and the
row order of the query and key projections (GGUF stores them permuted for its RoPE
layout, and transformers un-permutes them when it loads a GGUF). The low-rank update of
W is B·A, so permuting W's rows is permuting B's rows: A is written as trained, B of q/k
permuted the same way the base weights are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_NAME = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.(?:default\.)?weight$")


def permute_rows(w: npt.NDArray[np.float32], n_head: int) -> npt.NDArray[np.float32]:
    """Reorder rows from the Hugging Face rotary layout to GGUF's (per head, halves interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_rows(w: npt.NDArray[np.float32], n_head: int) -> npt.NDArray[np.float32]:
    """The inverse of ``permute_rows``: GGUF row order back to Hugging Face's."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def read_adapter(
    path: Path, n_head: int, n_kv_head: int
) -> tuple[dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]], float]:
    """(A, B) per Hugging Face weight name of a GGUF LoRA adapter, and its alpha."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    gguf_to_hf = {v: k for k, v in HF_TO_GGUF.items()}
    pairs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for tensor in reader.tensors:
        _, layer, kind, _weight, which = tensor.name.split(".")
        shape = [int(n) for n in reversed(tensor.shape)]
        array = np.asarray(tensor.data, dtype=np.float32).reshape(shape)
        pairs.setdefault(f"model.layers.{layer}.{gguf_to_hf[kind]}.weight", {})[which] = array
    result = {}
    for name, pair in pairs.items():
        b = pair["lora_b"]
        if "q_proj" in name:
            b = unpermute_rows(b, n_head)
        elif "k_proj" in name:
            b = unpermute_rows(b, n_kv_head)
        result[name] = (pair["lora_a"], b)
    return result, alpha


def gguf_lora_tensors(
    state: dict[str, Any], n_head: int, n_kv_head: int
) -> dict[str, npt.NDArray[np.float32]]:
    """GGUF adapter tensors (``blk.N.attn_q.weight.lora_a`` …) from a peft state dict."""
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, tensor in state.items():
        match = _PEFT_NAME.search(name)
        if not match:
            continue
        layer, module, which = match.groups()
        if module not in HF_TO_GGUF:
            raise ValueError(f"cannot map LoRA module {module!r} to GGUF")
        array = tensor.detach().float().cpu().numpy()
        if which == "B" and module == "self_attn.q_proj":
            array = permute_rows(array, n_head)
        elif which == "B" and module == "self_attn.k_proj":
            array = permute_rows(array, n_kv_head)
        out[f"blk.{layer}.{HF_TO_GGUF[module]}.weight.lora_{which.lower()}"] = np.ascontiguousarray(
            array
        )
    if not out:
        raise ValueError("no LoRA tensors found in the state dict")
    return out


def write_adapter(
    path: Path,
    tensors: dict[str, npt.NDArray[np.float32]],
    alpha: float,
    architecture: str = "llama",
    name: str = "shiftdown-lora",
) -> None:
    """Write ``tensors`` as a GGUF LoRA adapter (float16) at ``path``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("general.name", name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for tensor_name, array in sorted(tensors.items()):
        writer.add_tensor(tensor_name, array.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
