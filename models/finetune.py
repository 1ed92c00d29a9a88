"""Fine-tune a base SLM on teacher labels with LoRA, on CPU or CUDA, and export a GGUF
adapter plus the manifest the SLM worker serves it with.

The answer is one code token per label (``models.coding``); the loss is cross-entropy
over the label codes at the answer position only, which is exactly the distribution the
worker computes. Prompts are tokenized by llama.cpp's tokenizer (``Vocab``), the same
code path as serving. Needs the ``train`` extra (torch, transformers, peft, gguf).
"""

from __future__ import annotations

import math
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.coding import FINETUNE_TEMPLATE, PromptTemplate, Vocab
from models.finetune_manifest import file_sha256, teacher_hash, write_heldout
from models.gguf_adapter import gguf_lora_tensors, write_adapter
from shiftdown.manifest import FORMAT, BaseModelRef, ModelManifest, TeacherSetRef

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters; all of them are recorded in the manifest."""

    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    epochs: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 16
    warmup_frac: float = 0.05
    max_doc_tokens: int = 64
    seed: int = 0
    full: bool = False  # full fine-tune instead of LoRA


def stratified_split(
    examples: Sequence[tuple[str, str]], valid_frac: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Seeded split that keeps each label's share in both parts."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for ex in examples:
        by_label.setdefault(ex[1], []).append(ex)
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    valid: list[tuple[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = round(len(group) * valid_frac)
        valid += group[:k]
        train += group[k:]
    rng.shuffle(train)
    return train, valid


def export(model: Any, base_gguf: Path, out_dir: Path, config: FinetuneConfig) -> dict[str, Any]:
    """Write the adapter (LoRA) or the full model's GGUFs; returns the manifest's file entries.

    A LoRA model is served merged (``models.served``), made from the adapter without
    torch; a full fine-tune has no adapter, so its own weights are exported here.
    """
    files: dict[str, Any] = {}
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    if not config.full:
        state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        write_adapter(
            out_dir / "adapter.gguf", gguf_lora_tensors(state, heads, kv_heads), config.lora_alpha
        )
        files["adapter"] = "adapter.gguf"
        return files
    from models.gguf_export import export_gguf
    from models.merge import quantize

    f16 = out_dir / "model-f16.gguf"
    export_gguf(base_gguf, model.state_dict(), f16, heads, kv_heads)
    files["merged"] = {"f16": f16.name}
    for kind in ("q8_0", "q4_0"):
        target = out_dir / f"model-{kind}.gguf"
        quantize(f16, target, kind)
        files["merged"][kind] = target.name
    files["serve"] = "q8_0"
    return files


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Shuffled batches of similar lengths: less padding, same randomness per epoch."""
    order = list(range(len(lengths)))
    random.shuffle(order)
    pool = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.shuffle(batches)
    return batches


def finetune(
    base_gguf: Path,
    examples: Sequence[tuple[str, str]],
    labels: Sequence[str],
    out_dir: Path,
    config: FinetuneConfig = FinetuneConfig(),
    on_step: Callable[[int, int, float], None] | None = None,
    heldout: Sequence[tuple[str, str]] = (),
) -> ModelManifest:
    """Train a LoRA adapter on ``examples`` and write ``adapter.gguf`` + ``manifest.json``
    (and ``heldout.csv``, the examples kept out of training, when given).

    Returns the manifest. ``on_step(step, total, loss)`` reports progress.
    """
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    unknown = {label for _, label in examples} - set(labels)
    if unknown:
        raise ValueError(f"teacher labels outside the taxonomy: {sorted(unknown)[:5]}")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    vocab = Vocab(Llama(model_path=str(base_gguf), vocab_only=True, verbose=False))
    codes = vocab.codes(labels)
    prefix, suffix = PromptTemplate(FINETUNE_TEMPLATE).split(labels)
    head = vocab.encode_fixed(prefix, first=True)
    tail = vocab.encode_fixed(suffix, first=False)
    index = {label: i for i, label in enumerate(labels)}
    data = [
        (head + vocab.encode_document(text)[: config.max_doc_tokens] + tail, index[label])
        for text, label in examples
    ]

    # torch and transformers are typed loosely; the model is handled as Any.
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base_gguf.parent), gguf_file=base_gguf.name, dtype=torch.float32
    )
    if config.full:
        backbone = model.model
    else:
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=round(config.lora_alpha),
                lora_dropout=config.lora_dropout,
                target_modules=LORA_TARGETS,
                bias="none",
            ),
        )
        backbone = model.base_model.model.model
    model = model.to(device)
    code_index = torch.tensor(codes, device=device)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = max(1, round(steps_per_epoch * config.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel: one launch per step instead of several per parameter tensor.
    # On the H100 it did not shorten this model's ~140 ms steps measurably; what does
    # bound them (the arithmetic is ~2 ms) is still to be profiled.
    optim = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=device == "cuda"
    )
    warmup = max(1, round(total * config.warmup_frac))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))),
    )
    output_embeddings = model.get_output_embeddings()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    model.train()
    step, started = 0, time.perf_counter()
    batches: list[list[int]] = []
    while step < total:
        if not batches:
            batches = length_batches([len(ids) for ids, _ in data], config.batch_size)
        batch = [data[i] for i in batches.pop()]
        width = max(len(ids) for ids, _ in batch)
        # Left padding puts every answer position at -1.
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        target = torch.tensor([y for _, y in batch], device=device)
        with autocast:
            hidden = backbone(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
            ).last_hidden_state[:, -1]
            # Only the label codes' rows of the output layer: the served distribution.
            logits = hidden.float() @ output_embeddings.weight[code_index].float().T
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        if on_step:
            on_step(step, total, loss.item())
    train_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    files = export(model, base_gguf, out_dir, config)
    manifest = ModelManifest(
        format=FORMAT,
        base_model=BaseModelRef(file=base_gguf.name, sha256=file_sha256(base_gguf)),
        **files,
        labels=list(labels),
        label_codes=codes,
        prompt_template=FINETUNE_TEMPLATE,
        temperature=1.0,
        teacher_set=TeacherSetRef(sha256=teacher_hash(examples), examples=len(examples)),
        heldout=write_heldout(out_dir, heldout) if heldout else None,
        hyperparameters={**asdict(config), "steps": total, "device": device},
        train_seconds=round(train_s, 1),
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    manifest.write(out_dir / "manifest.json")
    return manifest
