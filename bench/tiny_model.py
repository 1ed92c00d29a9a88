"""A tiny random-weight llama GGUF with a real model's tokenizer and vocabulary.

The SLM's own code path (tokenizing, packing sequences, llama_decode, reading 77
logits, building results, storing them) runs on it at the speed its host-side work
allows: its forward pass costs little next to that, so whatever rate a bench measures
on it is the ceiling that no GPU can lift. Nothing is downloaded: the tokenizer
(vocabulary, merges, token types, chat template) is copied from a GGUF on disk, by
default the bundled SmolLM2-135M, and a sidecar manifest gives it the demo model's
prompt and label coding, so that it is served exactly as a fine-tuned model is.

Sizes that keep the forward pass small on a CPU, measured on AVX-512: one block of
width 32 with one head (each further block adds about 17 us per document to a decode of
16 on 2 cores), and the tied output matrix (49,152 x 32, the one big tensor) in Q4_0.
F16 is slower there, as is a width of 16 (ggml's F16 dot product has no SIMD path for
rows shorter than 64).

    python -m bench.tiny_model OUT.gguf [--layers 1] [--width 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

# Keys copied from the source GGUF as they are: what tokenizes and what templates.
_COPIED = ("tokenizer.", "general.languages", "general.license")
DEMO_MANIFEST = Path(__file__).resolve().parent.parent / "demo" / "banking77-lora" / "manifest.json"
# What a served model's manifest says about its prompt and coding.
_SERVED = ("labels", "label_codes", "prompt_template", "temperature")


def write_tiny_gguf(
    out: Path,
    source: Path | None = None,
    layers: int = 1,
    width: int = 32,
    heads: int = 1,
    kv_heads: int = 1,
    ff: int = 32,
    context: int = 8192,
    seed: int = 0,
    embed_type: str = "Q4_0",
    manifest_from: Path | None = DEMO_MANIFEST,
) -> Path:
    """Write a llama-architecture GGUF of ``layers`` blocks of ``width`` with random
    weights and ``source``'s tokenizer, and beside it (from ``manifest_from``, a model
    manifest on the same vocabulary) the sidecar manifest that gives it a prompt and
    label coding; returns ``out``."""
    import gguf

    if source is None:
        from models.base import default_gguf_path

        source = default_gguf_path()
    reader = gguf.GGUFReader(str(source))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("shiftdown tiny random-weight host-ceiling model")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        if not key.startswith(_COPIED):
            continue
        types = field.types
        sub = types[1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), types[0], sub_type=sub)

    rng = np.random.default_rng(seed)
    head_dim = width // heads

    def weight(*shape: int) -> npt.NDArray[np.float16]:
        # Scaled so that activations stay finite through the blocks.
        values: npt.NDArray[np.float16] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(
            np.float16
        )
        return values

    # The output projection is tied to the embedding (no output.weight), as in SmolLM2.
    # It is the one big matrix (vocabulary x width): stored in ``embed_type`` it costs
    # the CPU a fraction of what F16 does.
    embed = weight(n_vocab, width).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[embed_type]
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(embed, qtype), raw_dtype=qtype)
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    for i in range(layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", weight(width, width))
        writer.add_tensor(f"{blk}.attn_k.weight", weight(kv_heads * head_dim, width))
        writer.add_tensor(f"{blk}.attn_v.weight", weight(kv_heads * head_dim, width))
        writer.add_tensor(f"{blk}.attn_output.weight", weight(width, width))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(ff, width))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(ff, width))
        writer.add_tensor(f"{blk}.ffn_down.weight", weight(width, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if manifest_from is not None:
        source_manifest = json.loads(manifest_from.read_text(encoding="utf-8"))
        served = {k: source_manifest[k] for k in _SERVED if k in source_manifest}
        served["note"] = "random weights: measures host-side speed, never accuracy"
        sidecar = out.with_name(out.name + ".manifest.json")
        sidecar.write_text(json.dumps(served), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="GGUF to take the tokenizer from")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    path = write_tiny_gguf(args.out, args.source, layers=args.layers, width=args.width)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
