"""Label-constrained classification with llama.cpp: one forward pass per document gives
a calibrated probability for every label of the task.

The fixed instruction text before the document is evaluated once and kept in the KV
cache; each document then costs only its own tokens plus the short answer cue.
``classify_many`` packs several documents, each its own sequence sharing the cached
prefix, into one ``llama_decode`` (``models.batched``): on a GPU that is where the
throughput comes from.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.batched import (
    BatchedDecoder,
    KvLayout,
    Pack,
    ThreadShare,
    check_parallel,
    set_threads,
)
from models.coding import (
    ANSWER_PREFIX,
    PLAIN_TEMPLATE,
    SYSTEM_PROMPT,
    TEXT_SLOT,
    PromptTemplate,
    Vocab,
)
from models.familiarity import Familiarity
from models.finetune_manifest import file_sha256
from models.hidden_state import STATE_POSITIONS, OutputInverse
from models.served import served_files
from models.streams import StreamDecoder
from shiftdown.errors import ModelError
from shiftdown.manifest import ModelManifest
from shiftdown.settings import DEFAULT_SERVE_TYPE, Settings


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
    # Tokens of one batched decode, documents and answer cues together (None: 32 per
    # parallel document, at least n_batch).
    decode_tokens: int | None = None
    flash_attn: bool = True
    # How a batched decode's KV cache is laid out: one cache (models.batched) or one
    # stream per document (models.streams).
    kv_layout: KvLayout = "unified"
    # Batched contexts over the one model, each decoded on its own thread (0: automatic,
    # see ``contexts``).
    decode_contexts: int = 0
    # A model with a LoRA adapter is served merged into this type, or as trained
    # ("adapter"); see models.served.
    serve_type: str = DEFAULT_SERVE_TYPE
    # Score unfamiliarity where the model has a familiarity file (models.familiarity).
    familiarity: bool = True

    @property
    def decode_budget(self) -> int:
        """Tokens one batched decode may hold."""
        return self.decode_tokens or max(self.n_batch, 32 * self.parallel)

    @property
    def contexts(self) -> int:
        """Batched contexts to make (none when decoding one document at a time).

        Automatic is two wherever there are two threads to share: a decode's host work
        (packing, llama.cpp's batch split, mask and graph) runs on one thread, so a
        second context decoding beside it keeps both cores busy. Measured on 2 vCPUs:
        1.43 to 1.75 times the tiny model's rate, the same rate for SmolLM2-135M
        (docs/performance.md)."""
        if self.parallel == 1:
            return 0
        if self.decode_contexts:
            return self.decode_contexts
        return 2 if self.threads >= 2 else 1

    @property
    def threads(self) -> int:
        """llama.cpp threads in all (unset: every core)."""
        return self.n_threads or os.cpu_count() or 1

    @property
    def context_threads(self) -> int:
        """llama.cpp threads of a batched context while every context decodes: an even
        share of ``threads``."""
        return max(1, self.threads // max(1, self.contexts))

    @classmethod
    def from_settings(cls, s: Settings) -> RuntimeOptions:
        """The options the settings (``SHIFTDOWN_*``) give this machine."""
        return cls(
            n_ctx=s.n_ctx,
            # llama-cpp-python's own default is half the cores; a worker process that is
            # alone on its machine should use them all (set n_threads when running several).
            n_threads=s.n_threads or os.cpu_count() or 1,
            n_batch=s.n_batch,
            n_gpu_layers=s.n_gpu_layers,
            max_text_chars=s.max_text_chars,
            parallel=s.parallel,
            decode_tokens=s.decode_tokens,
            flash_attn=s.flash_attn,
            kv_layout=s.kv_layout,
            decode_contexts=s.decode_contexts,
            serve_type=s.serve_type,
            familiarity=s.familiarity,
        )


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a GGUF, an optional LoRA adapter, and the model's manifest."""

    gguf_path: str
    labels: tuple[str, ...]
    adapter_path: str | None = None
    manifest: ModelManifest = field(default_factory=ModelManifest)


@dataclass(frozen=True)
class Prepared:
    """One document tokenized for a decode: its tokens followed by the answer cue."""

    tokens: npt.NDArray[np.int32]
    n_doc: int
    truncated: bool


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
    # The final hidden states at the last ``state_positions`` positions (the answer
    # position last), side by side, where they were computed.
    hidden: npt.NDArray[np.float32] | None = None
    # The unfamiliarity score and whether it passed the model's threshold (None and
    # False: the model has no familiarity file).
    unfamiliarity: float | None = None
    unfamiliar: bool = False

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

        check_parallel(options.parallel)
        if not Path(spec.gguf_path).is_file():
            raise ModelError(f"model file not found: {spec.gguf_path}")
        # The merge, on a first load, takes seconds; every later load finds its file.
        self.served_path, self.served_adapter = served_files(
            spec.gguf_path, spec.adapter_path, options.serve_type, options.n_threads or 0
        )
        try:
            self._llm = Llama(
                model_path=self.served_path,
                lora_path=self.served_adapter,
                n_ctx=options.n_ctx,
                n_threads=options.n_threads,
                n_threads_batch=options.n_threads,
                n_batch=options.n_batch,
                n_gpu_layers=options.n_gpu_layers,
                flash_attn=options.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {self.served_path}: {exc}") from exc
        self.spec = spec
        self.labels = list(spec.labels)
        self.familiarity = load_familiarity(spec.manifest) if options.familiarity else None
        self._inverse: OutputInverse | None = None
        self.options = options
        self.temperature = spec.manifest.served_temperature
        template = spec.manifest.prompt_template or chat_template_prompt(self._llm.metadata)
        self.template = PromptTemplate(template)
        self._vocab = Vocab(self._llm)
        prefix, suffix = self.template.split(self.labels)
        self._prefix = self._vocab.encode_fixed(prefix, first=True)
        self._suffix = self._vocab.encode_fixed(suffix, first=False)
        self._suffix_array = np.asarray(self._suffix, dtype=np.int32)
        self.codes = self._codes(spec.manifest)
        self._code_index = np.asarray(self.codes, dtype=np.intp)
        self._n_vocab = int(self._llm.n_vocab())
        # The familiarity score reads each document's hidden state back from its logits.
        self.hidden_states = self.familiarity is not None
        if self.familiarity is not None and self._inverse is not None:
            # Found here, not on every decode: a mismatch there failed each batch and then
            # each document of it one at a time.
            width = self._inverse.width * self.familiarity.positions
            if self.familiarity.dim != width:
                raise ModelError(
                    f"the familiarity file of {spec.gguf_path} was fitted on states of width "
                    f"{self.familiarity.dim}, this model gives {width}: fit it again for this "
                    "model (shiftdown familiarity fit)"
                )
        self._max_doc_tokens = options.n_ctx - len(self._prefix) - len(self._suffix)
        if self._max_doc_tokens < 16:
            raise ModelError(
                f"n_ctx={options.n_ctx} leaves no room for documents after the "
                f"{len(self._prefix)}-token instruction; raise SHIFTDOWN_N_CTX"
            )
        decoder = StreamDecoder if options.kv_layout == "streams" else BatchedDecoder
        self._decoders = [
            decoder(
                self._llm,
                self._prefix,
                options.parallel,
                options.decode_budget,
                options.flash_attn,
                options.context_threads,
            )
            for _ in range(options.contexts)
        ]
        self._batched = self._decoders[0] if self._decoders else None
        # Decoding together, the one-at-a-time context serves only documents too long
        # for a batch: its prefix is evaluated when the first of them comes. Threads
        # that decode in different batched contexts may meet here.
        self._prefix_ready = False
        self._alone = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # Threads of the decodes in flight: one alone takes them all.
        self._threads = ThreadShare(options.threads, options.context_threads)
        if self._batched is None:
            self._ready_prefix()

    def _ready_prefix(self) -> None:
        if not self._prefix_ready:
            self._llm.n_tokens = 0
            self._llm.eval(self._prefix)
            self._prefix_ready = True

    def _codes(self, manifest: ModelManifest) -> list[int]:
        coded = manifest.label_codes
        if coded is not None:
            if list(manifest.labels or []) != self.labels:
                raise ModelError("the model's label coding was made for another label list")
            return [int(c) for c in coded]
        return self._vocab.codes(self.labels)

    @property
    def hidden_states(self) -> bool:
        """Whether each result carries its final hidden states (``models.hidden_state``):
        on where the familiarity score needs them, or where a caller turns them on."""
        return self._inverse is not None

    @hidden_states.setter
    def hidden_states(self, on: bool) -> None:
        if on and self._inverse is None:
            self._inverse = OutputInverse(self.served_path, self._n_vocab)
        elif not on:
            self._inverse = None

    @property
    def state_positions(self) -> int:
        """How many positions' states a result's ``hidden`` holds: what the familiarity
        score was fitted on, else ``STATE_POSITIONS`` (what a new fit reads)."""
        return self.familiarity.positions if self.familiarity is not None else STATE_POSITIONS

    @property
    def contexts(self) -> int:
        """Batched contexts: how many decodes may run at once, each from its own thread
        (0: the model decodes one document at a time)."""
        return len(self._decoders)

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the cached instruction prefix."""
        return len(self._prefix)

    def document_tokens(self, text: str) -> tuple[list[int], bool]:
        """The document's tokens as the model sees them, and whether they were cut: at
        ``max_text_chars`` characters, then at what the context leaves after the prompt."""
        tokens, _, truncated = self._tokens(text, None)
        return tokens.tolist(), truncated

    def _tokens(
        self, text: str, tail: npt.NDArray[np.int32] | None
    ) -> tuple[npt.NDArray[np.int32], int, bool]:
        limit = self.options.max_text_chars
        tokens, n, cut = self._vocab.document_array(text[:limit], self._max_doc_tokens, tail)
        return tokens, n, cut or len(text) > limit

    def prepare(self, text: str) -> Prepared:
        """Tokenize one document for a decode. Safe from any thread (llama.cpp's
        tokenizer runs without the GIL), so callers can prepare while another decodes."""
        return Prepared(*self._tokens(text, self._suffix_array))

    def fits(self, pack: Pack, item: Prepared) -> bool:
        """Whether ``item`` may join a decode that holds ``pack``: at most ``parallel``
        documents within the token budget. A document longer than a batched decode
        takes, or any document without a batched context, is decoded alone."""
        if not pack.count:
            return True
        batched = self._batched
        return batched is not None and batched.fits(pack, len(item.tokens))

    def decode(
        self, group: Sequence[Prepared], context: int = 0, alone: bool = True
    ) -> list[Classification]:
        """One decode of ``group`` (documents that ``fits`` put together), in order, in
        batched context number ``context``: one thread at a time per context. ``alone``:
        no other decode is expected beside it, so it takes every llama.cpp thread if
        none is in flight (else its share). Each result's latency is its share of the
        decode."""
        batched = self._decoders[context] if self._decoders else None
        if len(group) == 1 and (batched is None or len(group[0].tokens) > batched.longest):
            return [self._decode_alone(group[0])]
        if batched is None:
            raise ModelError("this model was loaded to decode one document at a time")
        inverse = self._inverse
        with self._threads.held(alone) as threads:
            start = time.perf_counter()
            batched.use_threads(threads)
            logits, rows = batched.decode(
                [p.tokens for p in group],
                self._code_index,
                inverse.rows if inverse else None,
                self.state_positions,
            )
        states = None
        if inverse is not None and rows is not None:
            states = inverse.states(rows).reshape(len(group), -1)
        share = (time.perf_counter() - start) * 1000.0 / len(group)
        return self._results(logits, group, share, states)

    def _results(
        self,
        logits: npt.NDArray[np.float64],
        group: Sequence[Prepared],
        latency_ms: float,
        states: npt.NDArray[np.float32] | None = None,
    ) -> list[Classification]:
        """Results from a (documents x labels) matrix of raw label logits, all at once."""
        scaled = logits / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        probs = np.exp(scaled)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        confidence = probs[np.arange(len(best)), best].tolist()
        fixed = len(self._prefix) + len(self._suffix)
        labels = self.labels
        n = len(group)
        scores: list[float | None] = [None] * n
        flags = [False] * n
        if states is not None and self.familiarity is not None:
            values, passed = self.familiarity.unfamiliar(states)
            scores, flags = values.tolist(), passed.tolist()
        return [
            Classification(
                label=labels[b],
                confidence=c,
                probs=probs[i],
                logits=logits[i],
                latency_ms=latency_ms,
                prompt_tokens=fixed + p.n_doc,
                truncated=p.truncated,
                hidden=None if states is None else states[i],
                unfamiliarity=scores[i],
                unfamiliar=flags[i],
            )
            for i, (b, c, p) in enumerate(zip(best.tolist(), confidence, group, strict=True))
        ]

    def _decode_alone(self, item: Prepared) -> Classification:
        return self._decode_each([item])[0]

    def _decode_each(self, items: Sequence[Prepared]) -> list[Classification]:
        """Each of ``items`` decoded alone, one after another. The host's share (hidden
        states and their familiarity) is done once for all of them: per document, its
        products read the output inverse and the bank from memory for one row, which cost
        almost 10 % of a document's time on the CPU. One caller at a time, and never
        beside batched decodes that hold the threads (``ThreadShare``)."""
        with self._alone, self._threads.held(alone=True) as threads:
            set_threads(self._llm.ctx, threads)
            return self._decode_each_held(items)

    def _decode_each_held(self, items: Sequence[Prepared]) -> list[Classification]:
        from llama_cpp import llama_get_logits_ith

        self._ready_prefix()
        inverse = self._inverse
        tail = self.state_positions if inverse is not None else 1
        ctx, width = self._llm.ctx, (self._n_vocab,)
        logits = np.empty((len(items), len(self._code_index)), dtype=np.float64)
        # The rows the hidden states are read back from (none without states).
        columns = inverse.rows if inverse is not None else np.empty(0, dtype=np.intp)
        extra = np.empty((len(items) * tail, len(columns)), np.float32)
        latency = np.empty(len(items))
        for i, item in enumerate(items):
            start = time.perf_counter()
            # Rewind to the end of the cached prefix; eval() drops the KV cells past it.
            self._llm.n_tokens = len(self._prefix)
            if tail == 1:
                self._llm.eval(item.tokens.tolist())
            else:
                self._eval_with_outputs(item.tokens.tolist(), tail)
            # Views of llama.cpp's output rows: only the columns wanted are copied.
            for k, at in enumerate(range(-tail, 0)):
                row = np.ctypeslib.as_array(llama_get_logits_ith(ctx, at), shape=width)
                extra[i * tail + k] = row[columns]
            logits[i] = row[self._code_index]
            latency[i] = time.perf_counter() - start
        start = time.perf_counter()
        states = None
        if inverse is not None:
            states = inverse.states(extra).reshape(len(items), -1)
        results = self._results(logits, items, 0.0, states)
        shared = (time.perf_counter() - start) / len(items)
        return [
            replace(r, latency_ms=(t + shared) * 1000.0)
            for r, t in zip(results, latency.tolist(), strict=True)
        ]

    def _eval_with_outputs(self, tokens: list[int], tail: int) -> None:
        """``Llama.eval`` with outputs at the last ``tail`` tokens, not only the last, in
        the same decode: a second decode for the token before would read every weight
        again. Chunks are cut from the end, so that the last holds every output."""
        llm = self._llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        n, step = len(tokens), llm.n_batch
        for end in range(n - (n - 1) // step * step, n + 1, step):
            chunk = tokens[max(0, end - step) : end]
            llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=False)
            if end == n:
                for i in range(max(0, len(chunk) - tail), len(chunk)):
                    llm._batch.batch.logits[i] = True
            llm._ctx.decode(llm._batch)
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)

    def classify(self, text: str) -> Classification:
        """The distribution over every label for one document."""
        return self._decode_alone(self.prepare(text))

    def classify_many(self, texts: Sequence[str]) -> list[Classification]:
        """Distributions for several documents, in order: decoded ``parallel`` at a time
        (and at most the decode's token budget) when the model was loaded with
        ``parallel > 1``, in every batched context at once, else one by one. One caller
        at a time (``models.decode_loop`` serves many)."""
        if self._batched is None:
            return self._decode_each([self.prepare(text) for text in texts])
        items = self._prepare_all(texts)
        groups = self._groups(items)
        results: list[Classification | None] = [None] * len(items)
        alone = len(groups) == 1

        def run(context: int, taken: _Shared) -> None:
            while (group := taken.take()) is not None:
                decoded = self.decode([items[i] for i in group], context, alone)
                for i, result in zip(group, decoded, strict=True):
                    results[i] = result

        # The same groups whatever the number of contexts, so the same results: each
        # context takes the next group when its decode is done.
        taken = _Shared(groups)
        if self.contexts == 1 or alone:
            run(0, taken)
        else:
            self._on_contexts(lambda context: run(context, taken))
        return [r for r in results if r is not None]

    def _groups(self, items: Sequence[Prepared]) -> list[list[int]]:
        """``items`` (by index) packed into decodes, as ``fits`` allows."""
        order: Sequence[int] = range(len(items))
        if isinstance(self._batched, StreamDecoder):
            # Each document of a streamed decode is padded to the longest: decode
            # documents of about the same length together.
            order = sorted(order, key=lambda i: len(items[i].tokens))
        groups: list[list[int]] = []
        pack = Pack()
        for i in order:
            if not groups or not self.fits(pack, items[i]):
                groups.append([])
                pack = Pack()
            groups[-1].append(i)
            pack.add(len(items[i].tokens))
        return groups

    def _prepare_all(self, texts: Sequence[str]) -> list[Prepared]:
        """Every text tokenized, in order: in one slice per context, on the contexts'
        threads (llama.cpp's tokenizer runs without the GIL), so that tokenizing a task
        takes a share of the time it takes on the decoding thread alone."""
        if self.contexts == 1 or len(texts) < 2 * self.contexts:
            return [self.prepare(text) for text in texts]
        step = -(-len(texts) // self.contexts)
        slices: list[list[Prepared]] = [[] for _ in range(self.contexts)]

        def prepare(k: int) -> None:
            slices[k] = [self.prepare(text) for text in texts[k * step : (k + 1) * step]]

        self._on_contexts(prepare)
        return [item for part in slices for item in part]

    def _on_contexts(self, work: Callable[[int], None]) -> None:
        """``work(k)`` for every context k at once: k = 0 on this thread, the others on
        the classifier's own threads; the first error is raised once all are done."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.contexts - 1, "shiftdown-context")
        futures = [self._pool.submit(work, k) for k in range(1, self.contexts)]
        try:
            work(0)
        finally:
            for future in futures:
                future.exception()
        for future in futures:
            future.result()


class _Shared:
    """Groups that several threads draw from, each group once."""

    def __init__(self, groups: list[list[int]]) -> None:
        self._groups = iter(groups)
        self._lock = threading.Lock()

    def take(self) -> list[int] | None:
        """The next group, or None when none is left."""
        with self._lock:
            return next(self._groups, None)


def load_familiarity(manifest: ModelManifest) -> Familiarity | None:
    """The model's unfamiliarity score, or None where its manifest names none. A named
    file that is missing or altered is an error, not a model served unprotected."""
    ref = manifest.familiarity
    if ref is None or not ref.path:
        return None
    path = Path(ref.path)
    if not path.is_file():
        raise ModelError(f"familiarity file {path} named by the model's manifest not found")
    if file_sha256(path) != ref.sha256:
        raise ModelError(f"familiarity file {path} is not the one the manifest names")
    return Familiarity.load(path)


def softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Numerically stable softmax."""
    z = np.exp(x - np.max(x))
    result: npt.NDArray[np.float64] = z / z.sum()
    return result
