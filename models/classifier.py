"""Label-constrained classification with llama.cpp: one forward pass per document gives
a calibrated probability for every label of the task.

The fixed instruction text before the document is evaluated once and kept in the KV
cache; each document then costs only its own tokens plus the short answer cue.
``classify_many`` packs several documents, each its own sequence sharing the cached
prefix, into one ``llama_decode``: on a GPU that is where the throughput comes from.
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
    # Documents decoded together by classify_many (1: one at a time).
    parallel: int = 1


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
        self._batched = _BatchedContext(self) if options.parallel > 1 else None
        # Decoding together, the one-at-a-time context serves only documents too long
        # for a batch: its prefix is evaluated when the first of them comes.
        self._prefix_ready = False
        if self._batched is None:
            self._ready_prefix()

    def _ready_prefix(self) -> None:
        if not self._prefix_ready:
            self._llm.n_tokens = 0
            self._llm.eval(self._prefix)
            self._prefix_ready = True

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

    def document_tokens(self, text: str) -> tuple[list[int], bool]:
        """The document's tokens as the model sees them, and whether they were cut: at
        ``max_text_chars`` characters, then at what the context leaves after the prompt."""
        truncated = len(text) > self.options.max_text_chars
        doc = self._vocab.encode_document(text[: self.options.max_text_chars])
        if len(doc) > self._max_doc_tokens:
            doc = doc[: self._max_doc_tokens]
            truncated = True
        return doc, truncated

    def _result(
        self, logits_ptr: Any, n_doc: int, truncated: bool, latency_ms: float
    ) -> Classification:
        logits = np.ctypeslib.as_array(logits_ptr, shape=(self._llm.n_vocab(),))
        label_logits = logits[self._code_index].astype(np.float64)
        probs = softmax(label_logits / self.temperature)
        best = int(np.argmax(probs))
        return Classification(
            label=self.labels[best],
            confidence=float(probs[best]),
            probs=probs,
            logits=label_logits,
            latency_ms=latency_ms,
            prompt_tokens=len(self._prefix) + n_doc + len(self._suffix),
            truncated=truncated,
        )

    def classify(self, text: str) -> Classification:
        """The distribution over every label for one document."""
        from llama_cpp import llama_get_logits_ith

        self._ready_prefix()
        start = time.perf_counter()
        doc, truncated = self.document_tokens(text)
        # Rewind to the end of the cached prefix; eval() drops the KV cells past it.
        self._llm.n_tokens = len(self._prefix)
        self._llm.eval(doc + self._suffix)
        return self._result(
            llama_get_logits_ith(self._llm.ctx, -1),
            len(doc),
            truncated,
            (time.perf_counter() - start) * 1000.0,
        )

    def classify_many(self, texts: Sequence[str]) -> list[Classification]:
        """Distributions for several documents, in order: decoded ``parallel`` at a time
        when the model was loaded with ``parallel > 1``, else one by one. Each result's
        latency is its share of the decode it was part of."""
        if self._batched is None:
            return [self.classify(t) for t in texts]
        return self._batched.classify(texts)


class _BatchedContext:
    """A second llama.cpp context over the same weights in which every document is its
    own sequence: the instruction prefix is sequence 0, evaluated once; each batch
    shares its cells with sequences 1..n (a unified KV cache makes that a bookkeeping
    step, not a copy), appends each document and the answer cue, decodes them all in one
    ``llama_decode``, reads each sequence's last logits, and drops the sequences."""

    def __init__(self, clf: Classifier) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        llm = clf._llm
        self.clf = clf
        self.parallel = clf.options.parallel
        # Tokens one decode may hold; documents longer than this go one by one.
        self.budget = clf.options.n_batch
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = self.parallel + 1
        params.kv_unified = True
        params.n_ctx = len(clf._prefix) + self.budget
        params.n_batch = params.n_ubatch = self.budget
        try:
            self.ctx = LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelError(f"llama.cpp could not make a batched context: {exc}") from exc
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, scales):
                raise ModelError("llama.cpp could not apply the LoRA adapter to a batch")
        self.batch = LlamaBatch(n_tokens=self.budget, embd=0, n_seq_max=1, verbose=False)
        # The prefix (the label list, for a zero-shot prompt) may exceed one decode.
        for at in range(0, len(clf._prefix), self.budget):
            self._fill([(0, clf._prefix[at : at + self.budget], at)])
            self._decode()

    def _fill(self, seqs: list[tuple[int, list[int], int]]) -> list[int]:
        """Put (sequence, tokens, first position) into the batch; returns the index of
        each sequence's last token, the only one whose logits are computed."""
        b = self.batch.batch
        n = 0
        last = []
        for seq, tokens, pos in seqs:
            for i, token in enumerate(tokens):
                b.token[n] = token
                b.pos[n] = pos + i
                b.seq_id[n][0] = seq
                b.n_seq_id[n] = 1
                b.logits[n] = i == len(tokens) - 1
                n += 1
            last.append(n - 1)
        b.n_tokens = n
        return last

    def _decode(self) -> None:
        import llama_cpp

        code = llama_cpp.llama_decode(self.ctx.ctx, self.batch.batch)
        if code != 0:
            raise ModelError(f"llama_decode failed with code {code}")

    def classify(self, texts: Sequence[str]) -> list[Classification]:
        import llama_cpp

        clf = self.clf
        prefix, suffix = len(clf._prefix), clf._suffix
        results: list[Classification | None] = [None] * len(texts)
        group: list[tuple[int, list[int], bool]] = []
        used = 0

        def flush() -> None:
            start = time.perf_counter()
            mem = self.ctx.memory
            for seq in range(1, len(group) + 1):
                llama_cpp.llama_memory_seq_cp(mem, 0, seq, -1, -1)
            try:
                last = self._fill(
                    [(k + 1, doc + suffix, prefix) for k, (_, doc, _) in enumerate(group)]
                )
                self._decode()
                share = (time.perf_counter() - start) * 1000.0 / len(group)
                for (index, doc, truncated), at in zip(group, last, strict=True):
                    ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, at)
                    results[index] = clf._result(ptr, len(doc), truncated, share)
            finally:
                for seq in range(1, len(group) + 1):
                    llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
            group.clear()

        for index, text in enumerate(texts):
            doc, truncated = clf.document_tokens(text)
            need = len(doc) + len(suffix)
            if need > self.budget:
                results[index] = clf.classify(text)
                continue
            if group and (used + need > self.budget or len(group) == self.parallel):
                flush()
                used = 0
            group.append((index, doc, truncated))
            used += need
        if group:
            flush()
        return [r for r in results if r is not None]


def softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Numerically stable softmax."""
    z = np.exp(x - np.max(x))
    result: npt.NDArray[np.float64] = z / z.sum()
    return result
