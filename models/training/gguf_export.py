"""Export a fully fine-tuned Hugging Face model as a GGUF that llama.cpp loads
(``models.merge.quantize`` then makes its quantized types).

The architecture and tokenizer are unchanged by fine-tuning, so every metadata field is
copied from the base GGUF and only the tensors are replaced, each named and laid out as
the architecture stores it (``models.training.architectures``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_header import open_gguf
from models.merge import f16_writer_like
from models.training.architectures import COMPUTED, Architecture, tensor_names


def gguf_tensors(
    state: dict[str, Any], arch: Architecture, n_layers: int, n_head: int, n_kv_head: int
) -> dict[str, npt.NDArray[np.float32]]:
    """Every tensor of a Hugging Face state dict under its GGUF name, in GGUF's layout.

    A tensor gguf-py has no name for is an error: dropping it would serve the base's.
    """
    names = tensor_names(arch.name, n_layers)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None and key == "lm_head.weight":
            # Tied to the embeddings (Gemma): GGUF has no output tensor of its own.
            continue
        if target is None:
            raise ValueError(f"no GGUF name for {key} in a {arch.name} model")
        array = tensor.detach().float().cpu().numpy()
        out[target] = arch.to_gguf(target, array, n_head, n_kv_head)
    return out


def export_gguf(
    base_gguf: Path,
    state: dict[str, Any],
    out: Path,
    arch: Architecture,
    n_layers: int,
    n_head: int,
    n_kv_head: int,
) -> None:
    """Write ``state`` (HF names, torch tensors) as an F16 GGUF with the base's metadata
    and the base's tensor list."""

    reader = open_gguf(base_gguf)
    tensors = gguf_tensors(state, arch, n_layers, n_head, n_kv_head)
    writer = f16_writer_like(reader, out)
    for tensor in reader.tensors:
        if tensor.name in tensors:
            array = tensors[tensor.name]
        elif tensor.name in COMPUTED:
            shape = [int(n) for n in reversed(tensor.shape)]
            array = np.asarray(tensor.data, np.float32).reshape(shape)
        else:
            raise ValueError(f"the fine-tuned {arch.name} model has no tensor {tensor.name}")
        # Norms stay F32 as llama.cpp's converter keeps them; matrices go to F16.
        dtype = np.float32 if array.ndim == 1 else np.float16
        writer.add_tensor(tensor.name, np.ascontiguousarray(array.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
