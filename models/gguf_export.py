"""Export a fully fine-tuned Hugging Face llama-family model as a GGUF that llama.cpp
loads (``models.merge.quantize`` then makes its quantized types).

The architecture and tokenizer are unchanged by fine-tuning, so every metadata field is
copied from the base GGUF and only the tensors are replaced (query and key rows permuted
back to GGUF's rotary layout, see ``gguf_adapter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_adapter import permute_rows
from models.merge import f16_writer_like

_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str:
    """The Hugging Face state-dict key of a GGUF llama tensor."""
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    _, layer, kind, _weight = gguf_name.split(".")
    return f"model.layers.{layer}.{_BLOCK[kind]}.weight"


def export_gguf(
    base_gguf: Path, state: dict[str, Any], out: Path, n_head: int, n_kv_head: int
) -> None:
    """Write ``state`` (HF names, torch tensors) as an F16 GGUF with the base's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    writer = f16_writer_like(reader, out)
    for tensor in reader.tensors:
        array: npt.NDArray[np.float32] = state[hf_name(tensor.name)].detach().float().cpu().numpy()
        if tensor.name.endswith("attn_q.weight"):
            array = permute_rows(array, n_head)
        elif tensor.name.endswith("attn_k.weight"):
            array = permute_rows(array, n_kv_head)
        # Norms stay F32 as llama.cpp's converter keeps them; matrices go to F16.
        dtype = np.float32 if array.ndim == 1 else np.float16
        writer.add_tensor(tensor.name, np.ascontiguousarray(array.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
