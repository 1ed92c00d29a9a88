"""The training process: fine-tunes the base SLM with torch and writes the adapter (or a
full model's F16 GGUF). ``models.training.finetune`` starts it as a child process.

It never loads llama.cpp. On a GPU machine the CUDA build of llama-cpp-python and torch
abort together in one process (``free(): invalid pointer`` as soon as torch is loaded
beside it), so the parent, which has llama.cpp, tokenizes the examples and quantizes,
and this process sees only token ids. ``models/__init__`` leaves llama.cpp out of a
process started with ``TRAINING_PROCESS_ENV`` set, and nothing imported here loads it;
the result says which ``llama_cpp`` modules were loaded (none), and a test checks it.

Protocol: ``python -m models.training.train_process JOB.json`` reads a ``TrainingJob``, prints one
JSON object per line on stdout (``{"step", "total", "loss"}`` while training, then
``{"done": {...}}``), and logs on stderr.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.gguf_header import header_fields
from models.training.architectures import ARCHITECTURES, Architecture, config_mismatches
from models.training.gguf_adapter import gguf_lora_tensors, write_adapter

# Training examples the exported model is checked on against the trained one.
PROBES = 4

# Set in the training process's environment: models/__init__ does not load llama.cpp.
TRAINING_PROCESS_ENV = "SHIFTDOWN_TRAINING_PROCESS"


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
    # The modules LoRA adapts; None: every projection of the architecture.
    lora_targets: tuple[str, ...] | None = None


@dataclass
class TrainingJob:
    """What the parent hands the training process: tokenized examples and where to write."""

    base_gguf: str
    out_dir: str
    # (prompt token ids, label index) per example, the answer cue included.
    data: list[tuple[list[int], int]]
    codes: list[int]
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    # The base's GGUF architecture (models.training.architectures).
    architecture: str = "llama"

    def write(self, path: Path) -> None:
        """Save as JSON for ``python -m models.training.train_process``."""
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> TrainingJob:
        """The job ``write`` saved."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["config"] = FinetuneConfig(**raw["config"])
        raw["data"] = [(ids, label) for ids, label in raw["data"]]
        return cls(**raw)


def export(
    model: Any, base_gguf: Path, out_dir: Path, config: FinetuneConfig, arch: Architecture
) -> dict[str, Any]:
    """Write the adapter (LoRA) or the full model's F16 GGUF; returns the manifest's file
    entries (the parent quantizes a full model's F16 file, with llama.cpp).

    A LoRA model is served merged (``models.served``), made from the adapter without
    torch; a full fine-tune has no adapter, so its own weights are exported here.
    """
    files: dict[str, Any] = {}
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
    if not config.full:
        state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        tensors = gguf_lora_tensors(state, arch, *shape)
        write_adapter(out_dir / "adapter.gguf", tensors, config.lora_alpha, arch.name)
        files["adapter"] = "adapter.gguf"
        return files
    from models.training.gguf_export import export_gguf

    f16 = out_dir / "model-f16.gguf"
    export_gguf(base_gguf, model.state_dict(), f16, arch, *shape)
    files["merged"] = {"f16": f16.name}
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


def train(
    job: TrainingJob, on_step: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Train on ``job`` and export; returns the manifest's file entries, the steps, the
    device and the training seconds. ``on_step(step, total, loss)`` reports progress."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config, data, codes = job.config, job.data, job.codes
    arch = ARCHITECTURES[job.architecture]
    base_gguf, out_dir = Path(job.base_gguf), Path(job.out_dir)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    # torch and transformers are typed loosely; the model is handled as Any.
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base_gguf.parent), gguf_file=base_gguf.name, dtype=torch.float32
    )
    mismatches = config_mismatches(model.config, header_fields(base_gguf))
    if mismatches:
        raise SystemExit(f"cannot fine-tune {base_gguf.name} faithfully: " + "; ".join(mismatches))
    if config.full:
        backbone = model.model
    else:
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=round(config.lora_alpha),
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets or arch.lora_targets),
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
    # Gemma 2 squashes its logits (cap · tanh(x / cap)); llama.cpp does when serving, so
    # training must, or it learns logits the served model never gives.
    softcap = getattr(model.config, "final_logit_softcapping", None)
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
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
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
    files = export(model, base_gguf, out_dir, config, arch)
    # What the trained model gives on a few examples, which the parent compares with
    # what llama.cpp serves from the exported files (models.training.export_check).
    model.eval()
    probes = []
    with torch.no_grad():
        for seq, _ in data[:PROBES]:
            hidden = backbone(input_ids=torch.tensor([seq], device=device)).last_hidden_state
            logits = hidden[0, -1].float() @ output_embeddings.weight[code_index].float().T
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            probes.append({"ids": seq, "logits": logits.cpu().tolist()})
    return {
        "files": files,
        "steps": total,
        "device": device,
        "train_seconds": round(train_s, 1),
        "probes": probes,
    }


def main() -> None:
    """Run the job named on the command line; see the module's docstring."""

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    job = TrainingJob.read(Path(sys.argv[1]))
    result = train(job, lambda step, total, loss: say({"step": step, "total": total, "loss": loss}))
    result["llama_cpp_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "llama_cpp")
    say({"done": result})


if __name__ == "__main__":
    main()
