"""Write a LoRA adapter trained in PyTorch as a GGUF adapter that llama.cpp loads on top
of a (quantized) base model, and read one back.

Names and layouts differ between Hugging Face and GGUF by architecture
(``models.training.architectures``). The low-rank update of W is B·A, so a row
permutation of W (llama's rotary order) is the same permutation of B's rows: A is
written as trained, B of q/k permuted the way the base weights are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_header import open_gguf
from models.training.architectures import Architecture, tensor_names

_PEFT_NAME = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.(?:default\.)?weight$")


def read_adapter(
    path: Path, arch: Architecture, n_head: int, n_kv_head: int
) -> tuple[dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]], float]:
    """(A, B) in Hugging Face's layout per adapted GGUF tensor (``blk.3.attn_q.weight``),
    and the adapter's alpha."""

    reader = open_gguf(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    pairs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for tensor in reader.tensors:
        target, _, which = tensor.name.rpartition(".")
        shape = [int(n) for n in reversed(tensor.shape)]
        pairs.setdefault(target, {})[which] = np.asarray(tensor.data, np.float32).reshape(shape)
    result = {}
    for target, pair in pairs.items():
        b = arch.from_gguf(target, pair["lora_b"], n_head, n_kv_head)
        result[target] = (pair["lora_a"], b)
    return result, alpha


def gguf_lora_tensors(
    state: dict[str, Any], arch: Architecture, n_layers: int, n_head: int, n_kv_head: int
) -> dict[str, npt.NDArray[np.float32]]:
    """GGUF adapter tensors (``blk.N.attn_q.weight.lora_a`` …) from a peft state dict."""
    names = tensor_names(arch.name, n_layers)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, tensor in state.items():
        match = _PEFT_NAME.search(name)
        if not match:
            continue
        layer, module, which = match.groups()
        target = names.get_name(f"model.layers.{layer}.{module}")
        if target is None:
            raise ValueError(f"cannot map LoRA module {module!r} of {arch.name} to GGUF")
        target += ".weight"
        array = tensor.detach().float().cpu().numpy()
        if which == "B":
            array = arch.to_gguf(target, array, n_head, n_kv_head)
        out[f"{target}.lora_{which.lower()}"] = np.ascontiguousarray(array)
    if not out:
        raise ValueError("no LoRA tensors found in the state dict")
    return out


def write_adapter(
    path: Path,
    tensors: dict[str, npt.NDArray[np.float32]],
    alpha: float,
    architecture: str,
    name: str = "shiftdown-lora",
) -> None:
    """Write ``tensors`` as a GGUF LoRA adapter (float16) at ``path``.

    ``architecture`` is the base's: llama.cpp refuses an adapter of another one.
    """
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
