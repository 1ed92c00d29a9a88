"""Fine-tune a base SLM on teacher labels with LoRA, on CPU or CUDA, and export a GGUF
adapter plus the manifest the SLM worker serves it with.

The answer is one code token per label (``models.coding``); the loss is cross-entropy
over the label codes at the answer position only, which is exactly the distribution the
worker computes. Prompts are tokenized here by llama.cpp's tokenizer (``Vocab``), the
same code path as serving; the training itself runs in a child process that never loads
llama.cpp (``models.training.train_process``). Needs the ``train`` extra (torch, transformers,
peft, gguf).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.coding import FINETUNE_TEMPLATE, PromptTemplate, Vocab
from models.finetune_manifest import file_sha256, teacher_hash, write_heldout
from models.training.architectures import trainable
from models.training.export_check import check_export
from models.training.train_process import TRAINING_PROCESS_ENV, FinetuneConfig, TrainingJob
from shiftdown.errors import ModelError
from shiftdown.manifest import FORMAT, BaseModelRef, ModelManifest, TeacherSetRef

__all__ = ["FinetuneConfig", "finetune", "stratified_split"]


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


def finetune(
    base_gguf: Path,
    examples: Sequence[tuple[str, str]],
    labels: Sequence[str],
    out_dir: Path,
    config: FinetuneConfig | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    heldout: Sequence[tuple[str, str]] = (),
) -> ModelManifest:
    """Train a LoRA adapter on ``examples`` and write ``adapter.gguf`` + ``manifest.json``
    (and ``heldout.csv``, the examples kept out of training, when given).

    Returns the manifest. ``on_step(step, total, loss)`` reports progress.
    """
    from llama_cpp import Llama

    config = config or FinetuneConfig()
    # Before anything is loaded: an architecture that cannot be fine-tuned is refused.
    arch = trainable(base_gguf)
    targets = list(config.lora_targets or arch.lora_targets)
    unknown_targets = sorted(set(targets) - set(arch.lora_targets))
    if unknown_targets:
        raise ModelError(
            f"a {arch.name} model has no LoRA target {unknown_targets}: "
            f"choose among {', '.join(arch.lora_targets)}"
        )
    unknown = {label for _, label in examples} - set(labels)
    if unknown:
        raise ValueError(f"teacher labels outside the taxonomy: {sorted(unknown)[:5]}")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    job = TrainingJob(str(base_gguf), str(out_dir), data, codes, config, arch.name)
    result = run_training(job, on_step)
    files = result["files"]
    if not config.full:
        adapter = out_dir / files["adapter"]
        checked = check_export(out_dir, base_gguf, adapter, result["probes"], codes)
    else:
        from models.merge import quantize

        f16 = out_dir / files["merged"]["f16"]
        checked = check_export(out_dir, f16, None, result["probes"], codes)
        for kind in ("q8_0", "q4_0"):
            target = out_dir / f"model-{kind}.gguf"
            quantize(f16, target, kind)
            files["merged"][kind] = target.name
        files["serve"] = "q8_0"
    manifest = ModelManifest(
        format=FORMAT,
        base_model=BaseModelRef(
            file=base_gguf.name,
            sha256=file_sha256(base_gguf),
            path=str(base_gguf.resolve()),
            architecture=arch.name,
        ),
        adapted_modules=["all"] if config.full else targets,
        export_check=checked,
        **files,
        labels=list(labels),
        label_codes=codes,
        prompt_template=FINETUNE_TEMPLATE,
        temperature=1.0,
        teacher_set=TeacherSetRef(sha256=teacher_hash(examples), examples=len(examples)),
        heldout=write_heldout(out_dir, heldout) if heldout else None,
        hyperparameters={**asdict(config), "steps": result["steps"], "device": result["device"]},
        train_seconds=result["train_seconds"],
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    manifest.write(out_dir / "manifest.json")
    return manifest


def run_training(
    job: TrainingJob, on_step: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Run ``job`` in a child process that never loads llama.cpp (``models.training.train_process``)
    and return what it reports when done; its log goes to this process's stderr."""
    with tempfile.TemporaryDirectory(prefix="shiftdown-train-") as folder:
        path = Path(folder) / "job.json"
        job.write(path)
        env = {**os.environ, TRAINING_PROCESS_ENV: "1"}
        command = [sys.executable, "-m", "models.training.train_process", str(path)]
        done: dict[str, Any] | None = None
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            for line in child.stdout:
                message = json.loads(line)
                if "done" in message:
                    done = message["done"]
                elif on_step is not None:
                    on_step(message["step"], message["total"], message["loss"])
        if child.returncode != 0 or done is None:
            raise ModelError(
                f"the training process failed (exit code {child.returncode}); its log is above"
            )
    if done["llama_cpp_modules"]:
        # A later import that pulls llama.cpp in would bring the GPU abort back.
        raise ModelError(f"the training process loaded {done['llama_cpp_modules'][:3]}")
    return done
