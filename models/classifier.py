"""Label-constrained classification with llama.cpp: one forward pass per document gives
a calibrated probability for every label of the task.

The fixed instruction text before the document is evaluated once and kept in the KV
cache; each document then costs only its own tokens plus the short answer cue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.coding import (
    ANSWER_PREFIX,
    PLAIN_TEMPLATE,
    SYSTEM_PROMPT,
    TEXT_SLOT,
    PromptTemplate,
    Vocab,
)
from shiftdown.errors import ModelError


@dataclass(frozen=True)
class RuntimeOptions:
    """llama.cpp options that belong to the machine, not to the model."""

    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    max_text_chars: int = 20_000


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a GGUF, an optional LoRA adapter, and the model's manifest."""

    gguf_path: str
    labels: tuple[str, ...]
    adapter_path: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Classification:
    """One document's label distribution and what producing it cost."""

    label: str
    confidence: float
    probs: npt.NDArray[np.float64]
    # The label codes' raw logits, before temperature: what calibration is fitted on.
    logits: npt.NDArray[np.float64]
    latency_ms: float
    prompt_tokens: int
    truncated: bool

    def top_k(self, labels: Sequence[str], k: int) -> dict[str, float]:
        """The k most probable labels (all when k is 0) with their probabilities."""
        order = np.argsort(-self.probs)
        if k:
            order = order[:k]
        return {labels[i]: round(float(self.probs[i]), 6) for i in order}


def chat_template_prompt(metadata: dict[str, str]) -> str:
    """A prompt template in the model's own chat format, or the plain one without it."""
    source = metadata.get("tokenizer.chat_template")
    if not source:
        return PLAIN_TEMPLATE
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    rendered = env.from_string(source).render(
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": TEXT_SLOT},
        ],
        add_generation_prompt=True,
        bos_token="",
        eos_token="",
    )
    return rendered + ANSWER_PREFIX


class Classifier:
    """A loaded GGUF model that maps texts to distributions over a fixed label list."""

    def __init__(self, spec: ModelSpec, options: RuntimeOptions) -> None:
        from llama_cpp import Llama

        if not Path(spec.gguf_path).is_file():
            raise ModelError(f"model file not found: {spec.gguf_path}")
        try:
            self._llm = Llama(
                model_path=spec.gguf_path,
                lora_path=spec.adapter_path,
                n_ctx=options.n_ctx,
                n_threads=options.n_threads,
                n_threads_batch=options.n_threads,
                n_batch=options.n_batch,
                n_gpu_layers=options.n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {spec.gguf_path}: {exc}") from exc
        self.spec = spec
        self.labels = list(spec.labels)
        self.options = options
        self.temperature = float(spec.manifest.get("temperature", 1.0))
        template = spec.manifest.get("prompt_template") or chat_template_prompt(self._llm.metadata)
        self.template = PromptTemplate(template)
        self._vocab = Vocab(self._llm)
        prefix, suffix = self.template.split(self.labels)
        self._prefix = self._vocab.encode_fixed(prefix, first=True)
        self._suffix = self._vocab.encode_fixed(suffix, first=False)
        self.codes = self._codes(spec.manifest)
        self._code_index = np.asarray(self.codes, dtype=np.intp)
        self._max_doc_tokens = options.n_ctx - len(self._prefix) - len(self._suffix)
        if self._max_doc_tokens < 16:
            raise ModelError(
                f"n_ctx={options.n_ctx} leaves no room for documents after the "
                f"{len(self._prefix)}-token instruction; raise SHIFTDOWN_N_CTX"
            )
        self._llm.eval(self._prefix)

    def _codes(self, manifest: dict[str, Any]) -> list[int]:
        coded = manifest.get("label_codes")
        if coded is not None:
            if list(manifest.get("labels", [])) != self.labels:
                raise ModelError("the model's label coding was made for another label list")
            return [int(c) for c in coded]
        return self._vocab.codes(self.labels)

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the cached instruction prefix."""
        return len(self._prefix)

    def classify(self, text: str) -> Classification:
        """The distribution over every label for one document."""
        from llama_cpp import llama_get_logits_ith

        start = time.perf_counter()
        truncated = len(text) > self.options.max_text_chars
        doc = self._vocab.encode_document(text[: self.options.max_text_chars])
        if len(doc) > self._max_doc_tokens:
            doc = doc[: self._max_doc_tokens]
            truncated = True
        # Rewind to the end of the cached prefix; eval() drops the KV cells past it.
        self._llm.n_tokens = len(self._prefix)
        self._llm.eval(doc + self._suffix)
        logits = np.ctypeslib.as_array(
            llama_get_logits_ith(self._llm.ctx, -1), shape=(self._llm.n_vocab(),)
        )
        label_logits = logits[self._code_index].astype(np.float64)
        probs = softmax(label_logits / self.temperature)
        best = int(np.argmax(probs))
        return Classification(
            label=self.labels[best],
            confidence=float(probs[best]),
            probs=probs,
            logits=label_logits,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            prompt_tokens=len(self._prefix) + len(doc) + len(self._suffix),
            truncated=truncated,
        )


def softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Numerically stable softmax."""
    z = np.exp(x - np.max(x))
    result: npt.NDArray[np.float64] = z / z.sum()
    return result
