"""Many documents in one ``llama_decode``: each its own sequence after a shared prefix.

A second llama.cpp context over the loaded weights, with a unified KV cache. The
instruction prefix is sequence 0, evaluated once; its cells are shared with sequences
1..parallel once, at start. A decode appends each document (with the answer cue) as
its own sequence, reads each one's last logits, and drops every cell past the prefix
in one call, so the next decode finds the cache as it was.

What sets the pace is host work, so each decode's host side is a few numpy
operations, not Python per token or per document:

- the batch lives in numpy arrays that the ``llama_batch`` points into (each token's
  sequence-id pointer is set once), filled with a handful of vectorized writes;
- logits come back as one (documents x vocabulary) matrix, of which only the label
  columns are copied out;
- the output buffer is sized for ``parallel`` rows, not for every token of the batch
  (a 4,096-token budget would otherwise reserve and clear 800 MB of logits);
- attention is flash attention, whose CPU kernel skips the masked cells: in a unified
  cache every token's mask spans the whole batch, and plain attention does the work
  of all of it, which grows with the square of the tokens per decode.

A decode may also copy out other columns of the same logits (``extra``): the rows the
final hidden state is read back from (``models.hidden_state``), at the last ``tail``
positions of each document (the answer position and the one before it).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.hidden_state import STATE_POSITIONS
from shiftdown.errors import ConfigError, ModelError

# llama.cpp's compile-time limit on sequences in one context (LLAMA_MAX_SEQ); sequence 0
# holds the shared prefix, so a decode has room for one document fewer.
LLAMA_MAX_SEQ = 256
MAX_PARALLEL = LLAMA_MAX_SEQ - 1

# How a batched context lays out its KV cache: one cache that every document's tokens
# share ("unified"), or one stream of cells per document ("streams", models.streams).
KvLayout = Literal["unified", "streams"]


@dataclass
class Pack:
    """What a decode being packed holds so far: documents, tokens, the longest one."""

    count: int = 0
    tokens: int = 0
    longest: int = 0

    def add(self, n_tokens: int) -> None:
        """Count one more document of ``n_tokens``."""
        self.count += 1
        self.tokens += n_tokens
        self.longest = max(self.longest, n_tokens)


def check_parallel(parallel: int) -> None:
    """A clear error for a ``parallel`` llama.cpp cannot make a context for."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(
            f"SHIFTDOWN_PARALLEL={parallel}: llama.cpp holds at most {LLAMA_MAX_SEQ} "
            f"sequences per context and one is the shared prompt prefix, so 1..{MAX_PARALLEL}"
        )


def set_threads(ctx: Any, threads: int) -> None:
    """Decode in llama.cpp context ``ctx`` on ``threads`` threads from its next decode on
    (a plain setter in llama.cpp, cheap enough to call before every decode)."""
    import llama_cpp

    llama_cpp.llama_set_n_threads(ctx, threads, threads)


class ThreadShare:
    """llama.cpp threads for decodes in several contexts at once: a decode expected to
    run alone takes every thread (``total``), and decodes that may run beside others take
    ``share`` each, so that decodes in flight use at most ``total`` threads while there
    are no more contexts than threads. A decode that took every thread makes the next
    wait for it: two contexts that each spin up every core's thread (llama.cpp's CPU
    threads wait at their barriers by spinning) slowed the real model to 0.84x one
    context on 2 vCPUs."""

    def __init__(self, total: int, share: int) -> None:
        self.total = total
        self.share = share
        self._busy = 0  # decodes in flight
        self._all_taken = False
        self._change = threading.Condition()

    def take(self, alone: bool) -> int:
        """Threads for a decode about to start (waits while one holds every thread)."""
        with self._change:
            while self._all_taken:
                self._change.wait()
            self._busy += 1
            if alone and self._busy == 1:
                self._all_taken = True
                return self.total
            return self.share

    def give_back(self) -> None:
        """A decode that took threads is done."""
        with self._change:
            self._busy -= 1
            self._all_taken = False
            self._change.notify_all()

    @contextmanager
    def held(self, alone: bool) -> Iterator[int]:
        """``take`` for the length of a ``with`` block, then ``give_back``."""
        threads = self.take(alone)
        try:
            yield threads
        finally:
            self.give_back()


class BatchedDecoder:
    """Decodes up to ``parallel`` documents, ``budget`` tokens in all, per call, on
    ``threads`` llama.cpp threads (default: the model's own). One thread at a time may
    use it; several over one model may decode at once, each from its own thread."""

    def __init__(
        self,
        llm: Any,
        prefix: Sequence[int],
        parallel: int,
        budget: int,
        flash_attn: bool = True,
        threads: int | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaContext

        check_parallel(parallel)
        self.parallel = parallel
        self.budget = budget
        self.prefix_len = len(prefix)
        self.n_vocab = int(llm.n_vocab())
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = parallel + 1
        params.n_batch = params.n_ubatch = budget
        if threads is not None:
            params.n_threads = params.n_threads_batch = threads
        self.threads = int(params.n_threads_batch)
        self._lay_out(params)
        # llama.cpp wants room for at least one output per sequence; a decode that reads
        # hidden states asks for the last STATE_POSITIONS of each document.
        params.n_outputs_max = STATE_POSITIONS * parallel + 1
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        try:
            self._ctx = LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelError(f"llama.cpp could not make a batched context: {exc}") from exc
        self._apply_adapter(llm)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._make_batch(budget)
        for at in range(0, len(prefix), budget):
            chunk = np.asarray(prefix[at : at + budget], dtype=np.int32)
            last = [len(chunk) - 1]
            self._load(chunk, np.arange(at, at + len(chunk)), np.zeros(len(chunk), np.int32), last)
            self._decode()
        for seq in range(1, parallel + 1):
            llama_cpp.llama_memory_seq_cp(self._memory, 0, seq, -1, -1)

    def use_threads(self, threads: int) -> None:
        """Decode on ``threads`` llama.cpp threads from now on."""
        set_threads(self._ctx.ctx, threads)
        self.threads = threads

    def _lay_out(self, params: Any) -> None:
        """One cache for the prefix and every document of a decode."""
        params.kv_unified = True
        params.n_ctx = self.prefix_len + self.budget

    @property
    def longest(self) -> int:
        """The longest document a decode takes."""
        return self.budget

    def fits(self, pack: Pack, n_tokens: int) -> bool:
        """Whether a document of ``n_tokens`` may join a decode that holds ``pack``."""
        return pack.count < self.parallel and pack.tokens + n_tokens <= self.budget

    def _apply_adapter(self, llm: Any) -> None:
        import llama_cpp

        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is None:
            return
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(llm.lora_scale)
        if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
            raise ModelError("llama.cpp could not apply the LoRA adapter to a batch")

    def _make_batch(self, size: int) -> None:
        import llama_cpp

        self._token = np.zeros(size, np.int32)
        self._pos = np.zeros(size, np.int32)
        self._n_seq_id = np.ones(size, np.int32)
        self._seq = np.zeros(size, np.int32)
        self._logits = np.zeros(size, np.int8)
        # Token i's sequence list is the one int at _seq[i], for good.
        base = self._seq.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * size)(
            *(ctypes.cast(base + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(size))
        )
        self._batch = llama_cpp.llama_batch(
            n_tokens=0,
            token=self._token.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            embd=None,
            pos=self._pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            n_seq_id=self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_ptrs,
            logits=self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def _load(
        self,
        tokens: npt.NDArray[np.int32],
        pos: npt.NDArray[Any],
        seq: npt.NDArray[Any],
        outputs: Any,
    ) -> None:
        n = len(tokens)
        self._token[:n] = tokens
        self._pos[:n] = pos
        self._seq[:n] = seq
        self._logits[:n] = 0
        self._logits[outputs] = 1
        self._batch.n_tokens = n

    def _decode(self) -> None:
        import llama_cpp

        code = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        if code != 0:
            raise ModelError(f"llama_decode failed with code {code}")

    def decode(
        self,
        docs: Sequence[npt.NDArray[np.int32]],
        columns: npt.NDArray[np.intp],
        extra: npt.NDArray[np.intp] | None = None,
        tail: int = 1,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32] | None]:
        """Each document's next-token logits at ``columns`` after its last token, one row
        per document, and with ``extra`` those columns at each of its last ``tail``
        positions too (``tail`` rows per document, in order; else None). ``docs`` are
        whole token sequences (document and answer cue): at most ``parallel`` of them and
        ``budget`` tokens in all."""
        import llama_cpp

        n = len(docs)
        tail = tail if extra is not None else 1
        if not 1 <= tail <= STATE_POSITIONS:
            raise ModelError(f"a decode reads 1..{STATE_POSITIONS} positions, not {tail}")
        self._pack(docs, tail)
        try:
            self._decode()
            # Rows in batch order: llama.cpp puts reordered outputs back before this.
            rows = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits(self._ctx.ctx), shape=(n * tail, self.n_vocab)
            )
            more = None if extra is None else rows[:, extra]
            return rows[tail - 1 :: tail, columns].astype(np.float64), more
        finally:
            # Every cell past the prefix, whatever its sequence, in one pass.
            llama_cpp.llama_memory_seq_rm(self._memory, -1, self.prefix_len, -1)

    def _pack(self, docs: Sequence[npt.NDArray[np.int32]], tail: int = 1) -> None:
        """Load ``docs`` into the batch, one after another, each its own sequence, with
        outputs at each one's last ``tail`` tokens."""
        n = len(docs)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if n else 0
        if not 0 < n <= self.parallel or total > self.budget or lengths.min() < tail:
            raise ModelError(
                f"a decode takes 1..{self.parallel} non-empty documents of at most "
                f"{self.budget} tokens in all, not {n} of {total}"
            )
        starts = np.repeat(ends - lengths, lengths)
        self._load(
            np.concatenate(docs),
            self.prefix_len + np.arange(total) - starts,
            np.repeat(np.arange(1, n + 1, dtype=np.int32), lengths),
            last_positions(ends - 1, tail),
        )


def last_positions(last: npt.NDArray[np.int64], tail: int) -> npt.NDArray[np.int64]:
    """Batch indices of each document's last ``tail`` tokens, in order, given each one's
    last token's index."""
    return (last[:, None] + np.arange(1 - tail, 1)).ravel()
