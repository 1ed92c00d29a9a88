"""Tiny random-weight models of each fine-tunable architecture, with that family's real
tokenizer, written as GGUF files in a test's folder (no weights are committed).

The tokenizers are llama.cpp's own vocab-only test files, shipped in the llama-cpp-python
sdist (``vendor/llama.cpp/models/ggml-vocab-*.gguf``); ``make test`` extracts them into
``SHIFTDOWN_VOCAB_DIR``. A model is built in transformers from a small config, and its
tensors are written by the project's own exporter (``gguf_tensors``): a test then checks
that llama.cpp and transformers read the file alike, so the exporter is checked too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

VOCAB_DIR_ENV = "SHIFTDOWN_VOCAB_DIR"


@dataclass(frozen=True)
class Case:
    """One architecture with one real tokenizer."""

    arch: str
    vocab: str  # ggml-vocab-<vocab>.gguf
    config: str  # transformers config class
    extra: dict[str, Any] = field(default_factory=dict)


# Gemma scales queries by 1/sqrt(256) in transformers whatever the head size (its
# query_pre_attn_scalar, which GGUF does not carry), and llama.cpp by 1/sqrt(head size):
# a head size of 256, as in the real Gemma 2 2B and Gemma 3 1B, makes both the same.
GEMMA = {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 512}
CASES = {
    "llama3": Case("llama", "llama-bpe", "LlamaConfig"),
    "mistral": Case("llama", "llama-spm", "LlamaConfig"),
    "qwen2": Case("qwen2", "qwen2", "Qwen2Config"),
    "qwen3": Case("qwen3", "qwen2", "Qwen3Config", {"head_dim": 128}),
    "phi3": Case("phi3", "phi-3", "Phi3Config", {"pad_token_id": 0}),
    "gemma2": Case(
        "gemma2",
        "gemma-4",
        "Gemma2Config",
        {**GEMMA, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    ),
    "gemma3": Case("gemma3", "gemma-4", "Gemma3TextConfig", GEMMA),
}
# Every real tokenizer the label coding must handle (Llama 3 and Qwen2 BPE, Llama 2 /
# Mistral and Phi-3 SentencePiece, Gemma's, GPT-2's).
TOKENIZERS = ["llama-bpe", "llama-spm", "phi-3", "qwen2", "qwen35", "gemma-4", "gpt-2"]


def vocab_file(name: str) -> Path:
    """The vocab-only GGUF of a real tokenizer, or a skip saying how to get it."""
    folder = os.environ.get(VOCAB_DIR_ENV)
    path = Path(folder) / f"ggml-vocab-{name}.gguf" if folder else None
    if path is None or not path.is_file():
        pytest.skip(f"no {name} vocab: run through `make test`, which sets {VOCAB_DIR_ENV}")
    return path


def hf_config(case: Case, vocab_size: int) -> Any:
    """A two-layer config of ``case``'s family."""
    import transformers

    cls = getattr(transformers, case.config)
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": case.arch.startswith("gemma"),
        **case.extra,
    }
    if case.arch.startswith("gemma"):
        kwargs.update(num_attention_heads=2, num_key_value_heads=1)
    return cls(**kwargs)


def _metadata(writer: Any, case: Case, cfg: Any) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(1)
    if case.arch.startswith("gemma"):
        writer.add_sliding_window(cfg.sliding_window)
    if case.arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if case.arch == "phi3":
        writer.add_uint32("phi3.rope.scaling.original_context_length", 1024)


def _copy_tokenizer(writer: Any, reader: Any) -> None:
    import gguf

    for key, fld in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        if fld.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, fld.contents(), fld.types[0], sub_type=fld.types[-1])
        else:
            writer.add_key_value(key, fld.contents(), fld.types[0])


def make_model(case: Case, out: Path, seed: int = 0) -> Path:
    """Write a random two-layer ``case`` model with its real tokenizer to ``out`` (F16)."""
    import gguf
    import torch
    import transformers

    from models.gguf_header import open_gguf
    from models.training.architectures import ARCHITECTURES
    from models.training.gguf_export import gguf_tensors

    vocab = open_gguf(vocab_file(case.vocab))
    cfg = hf_config(case, len(vocab.fields["tokenizer.ggml.tokens"].data))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Norm weights start at one (Gemma: zero); noise makes a misplaced offset show.
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
            # Sharp attention: at the initial scale every token attends alike, and the
            # query and key rows could be in any order without the logits showing it.
            if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")):
                param.mul_(15)
    arch = ARCHITECTURES[case.arch]
    tensors = gguf_tensors(
        model.state_dict(),
        arch,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    )
    if cfg.tie_word_embeddings:
        tensors.pop("output.weight", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), case.arch)
    writer.add_name(f"tiny-{case.arch}")
    _metadata(writer, case, cfg)
    _copy_tokenizer(writer, vocab)
    for name, array in tensors.items():
        dtype = np.float32 if array.ndim == 1 else np.float16
        writer.add_tensor(name, np.ascontiguousarray(array.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def llama_logits(model: Path, tokens: list[int], adapter: Path | None = None) -> np.ndarray:  # type: ignore[type-arg]
    """llama.cpp's next-token logits after ``tokens``."""
    from llama_cpp import Llama

    llm = Llama(
        str(model),
        lora_path=str(adapter) if adapter else None,
        n_ctx=512,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    llm.eval(tokens)
    logits = np.asarray(llm.scores[len(tokens) - 1], dtype=np.float64)
    llm.close()
    return logits


def torch_model(model: Path) -> Any:
    """transformers' reading of a GGUF model, float32."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(model.parent), gguf_file=model.name, dtype=torch.float32
    ).eval()


def torch_logits(model: Any, tokens: list[int]) -> np.ndarray:  # type: ignore[type-arg]
    """transformers' next-token logits after ``tokens``."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].double().numpy()  # type: ignore[no-any-return]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:  # type: ignore[type-arg]
    """Largest difference, as a share of the largest logit."""
    return float(np.abs(got - want).max() / np.abs(want).max())
