"""What fine-tuning must know about each base architecture, and nothing else does.

A base GGUF is read by transformers for training and by llama.cpp for serving, and the
two libraries do not store every tensor alike. Three conventions differ by family, and
each is undone here on the way back to GGUF:

- **Rotary row order.** llama.cpp's converter permutes the query and key rows of llama
  models only (transformers un-permutes them on load). Qwen, Phi-3 and Gemma are stored
  as in Hugging Face.
- **Norm offset.** Gemma's RMSNorm multiplies by ``1 + w``; its GGUF stores ``1 + w``,
  and transformers subtracts the 1 on load.
- **Fused projections.** Phi-3 has one ``qkv_proj`` and one ``gate_up_proj``; LoRA must
  target those, or the attention and gate are left unadapted.

Tensor names come from gguf-py's own map for the architecture (the one transformers
uses to load), so a module this table does not know is an error, never a wrong name.
Only architectures whose fine-tune is tested end to end are listed; any other GGUF is
still served, but ``finetune`` refuses it before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_header import gguf_architecture
from shiftdown.errors import ModelError

SEPARATE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# Tensors llama.cpp computes from the config (Llama 3's rope frequencies, Phi-3's long
# and short factors): not weights, so a full export copies them from the base.
COMPUTED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass(frozen=True)
class Architecture:
    """One GGUF architecture (``general.architecture``) as fine-tuning handles it."""

    name: str
    # The Hugging Face modules LoRA adapts (peft's target_modules).
    lora_targets: tuple[str, ...] = SEPARATE
    # Query and key rows stored in llama.cpp's rotary order (llama only).
    rotary_permuted: bool = False
    # Added to every norm weight in the GGUF (Gemma's 1 + w).
    norm_offset: float = 0.0
    # The families whose checkpoints use this layout, for the error and the docs.
    families: str = ""

    def to_gguf(
        self, gguf_name: str, array: npt.NDArray[np.float32], n_head: int, n_kv_head: int
    ) -> npt.NDArray[np.float32]:
        """A Hugging Face tensor (or a LoRA B matrix) as the GGUF tensor ``gguf_name``
        stores it."""
        if self.rotary_permuted and ".attn_q." in gguf_name:
            return permute_rows(array, n_head)
        if self.rotary_permuted and ".attn_k." in gguf_name:
            return permute_rows(array, n_kv_head)
        if self.norm_offset and gguf_name.endswith("norm.weight"):
            return array + np.float32(self.norm_offset)
        return array

    def from_gguf(
        self, gguf_name: str, array: npt.NDArray[np.float32], n_head: int, n_kv_head: int
    ) -> npt.NDArray[np.float32]:
        """The inverse of ``to_gguf``: a GGUF tensor in Hugging Face's layout."""
        if self.rotary_permuted and ".attn_q." in gguf_name:
            return unpermute_rows(array, n_head)
        if self.rotary_permuted and ".attn_k." in gguf_name:
            return unpermute_rows(array, n_kv_head)
        if self.norm_offset and gguf_name.endswith("norm.weight"):
            return array - np.float32(self.norm_offset)
        return array


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture(
            "llama", rotary_permuted=True, families="Llama 2/3.x, Mistral 7B, SmolLM2, TinyLlama"
        ),
        Architecture("qwen2", families="Qwen2, Qwen2.5"),
        Architecture("qwen3", families="Qwen3 (dense)"),
        Architecture("phi3", lora_targets=FUSED, families="Phi-3, Phi-3.5 mini"),
        Architecture("gemma2", norm_offset=1.0, families="Gemma 2"),
        Architecture("gemma3", norm_offset=1.0, families="Gemma 3 (text)"),
    )
}


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


def trainable(path: Path) -> Architecture:
    """The architecture of the base GGUF at ``path``, refused when it cannot be fine-tuned."""
    name = gguf_architecture(path)
    if name not in ARCHITECTURES:
        known = ", ".join(f"{a.name} ({a.families})" for a in ARCHITECTURES.values())
        raise ModelError(
            f"cannot fine-tune {path.name}: its architecture {name!r} is not one finetune "
            f"supports ({known}). It can still be served as it is (--model {path})."
        )
    return ARCHITECTURES[name]


def config_mismatches(config: Any, fields: dict[str, Any]) -> list[str]:
    """Where transformers' reading of a GGUF (``config``) computes another model than
    llama.cpp will serve from the same file (``fields``: its header).

    transformers takes a few hyperparameters from its own defaults, not the file: the
    released checkpoints match them, a modified one may not, and training it would fit a
    model that is never served.
    """
    arch = fields.get("general.architecture", "")
    found = []

    def differs(key: str, value: Any, what: str) -> None:
        stored = fields.get(f"{arch}.{key}")
        if stored is not None and value is not None and abs(float(stored) - float(value)) > 1e-6:
            found.append(f"{what}: transformers uses {value}, the GGUF says {stored}")

    differs("attention.key_length", getattr(config, "head_dim", None), "head size")
    if arch.startswith("gemma"):
        # llama.cpp scales queries by 1/sqrt(head size); transformers by this scalar.
        head = fields.get(f"{arch}.attention.key_length")
        differs(
            "attention.key_length", getattr(config, "query_pre_attn_scalar", head), "query scale"
        )
    if arch == "gemma2":
        for key, name in (
            ("attn_logit_softcapping", "attention soft-cap"),
            ("final_logit_softcapping", "final soft-cap"),
        ):
            differs(key, getattr(config, key, None), name)
    return found


def tensor_names(arch: str, n_layers: int) -> Any:
    """gguf-py's Hugging Face → GGUF tensor-name map for ``arch`` (``get_name``)."""
    import gguf

    by_name = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(by_name[arch], n_layers)
