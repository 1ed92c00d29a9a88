"""Many documents in one ``llama_decode``, each in its own stream of KV cells.

``models.batched`` keeps one KV cache that every document of a decode shares. Its
attention mask is built on the host with one entry per token per cell, so it grows with
the square of the tokens in a decode (about 1.3 MB per document at 255 documents of 50
tokens), and each document's attention runs over the cells of every document before it,
masked. That host work, not the GPU, sets the pace of a large batch.

Here the context has one stream of cells per sequence (``kv_unified = False``, llama.cpp
PR #14363). The prefix is evaluated once in stream 0 and copied into each document's
stream once, at start. A document then attends only to its own stream: the prefix and
itself, a mask of one stream's cells (256, llama.cpp's padding) per token, whatever the
batch holds.

llama.cpp computes a stream layout only in equal splits: every sequence of a micro-batch
has the same number of tokens. Documents of different lengths would be cut into as many
micro-batches as there are lengths, so each document is padded on the right to the
longest of its decode, repeating its last token. Causal attention keeps the padding out
of the document's own answer: a token never attends to a later position, and the logits
are read at the document's last real token. The padding costs arithmetic, not host work;
``Classifier.classify_many`` orders its documents by length to keep it small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.batched import BatchedDecoder, Pack, last_positions
from shiftdown.errors import ModelError

# llama.cpp rounds each stream up to this many cells.
STREAM_PAD = 256
# The longest document a stream is sized for beyond the prefix, at least: longer ones are
# decoded alone. Every stream holds prefix + this, rounded up to STREAM_PAD.
STREAM_DOC_TOKENS = 128


class StreamDecoder(BatchedDecoder):
    """Decodes up to ``parallel`` documents, ``budget`` tokens in all after padding to the
    longest, each document in its own KV stream."""

    def _lay_out(self, params: Any) -> None:
        stream = -(-(self.prefix_len + min(self.budget, STREAM_DOC_TOKENS)) // STREAM_PAD)
        self.stream_cells = stream * STREAM_PAD
        params.kv_unified = False
        params.n_ctx = self.stream_cells * (self.parallel + 1)

    @property
    def longest(self) -> int:
        """The longest document a decode takes: what its stream holds after the prefix."""
        return min(self.budget, self.stream_cells - self.prefix_len)

    def fits(self, pack: Pack, n_tokens: int) -> bool:
        """Whether a document of ``n_tokens`` may join ``pack``: every document of a decode
        counts as long as its longest."""
        width = max(pack.longest, n_tokens)
        return (
            pack.count < self.parallel
            and width <= self.longest
            and (pack.count + 1) * width <= self.budget
        )

    def _pack(self, docs: Sequence[npt.NDArray[np.int32]], tail: int = 1) -> None:
        """Load ``docs`` as sequences 1..n, each padded on the right to the longest, with
        outputs at each one's last ``tail`` real tokens."""
        n = len(docs)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
        width = int(lengths.max()) if n else 0
        if not 0 < n <= self.parallel or n * width > self.budget or lengths.min() < tail:
            raise ModelError(
                f"a decode takes 1..{self.parallel} non-empty documents of at most "
                f"{self.budget} tokens in all once padded, not {n} of {n * width}"
            )
        if width > self.longest:
            raise ModelError(f"a document of {width} tokens does not fit a {self.longest} stream")
        starts = np.cumsum(lengths) - lengths
        # Column j of document i is its token j, or its last token past its end.
        index = starts[:, None] + np.minimum(np.arange(width), lengths[:, None] - 1)
        self._load(
            np.concatenate(docs)[index].ravel(),
            np.tile(self.prefix_len + np.arange(width), n),
            np.repeat(np.arange(1, n + 1, dtype=np.int32), width),
            last_positions(np.arange(n) * width + lengths - 1, tail),
        )
