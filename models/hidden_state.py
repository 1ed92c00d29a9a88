"""The final hidden state at the answer position, read back from the logits llama.cpp
already returns for it.

The output layer of a llama-family model is linear and without bias: logits = W · h,
with h the final norm's output and W the output matrix (``output.weight``, or the token
embeddings when they are tied). W has far more rows (the vocabulary) than columns (the
model's width), so h is the least-squares solution of W · h = logits, exact up to float
rounding: llama.cpp computed those logits from exactly these (quantized) weights. A
seeded subset of the rows is enough, and keeps the inverse small (width x rows).

Why not ask llama.cpp for embeddings: with embeddings on, every token of a decode becomes
an output (the output layer runs over all of them), and splitting each decode in two to
avoid that (the documents, then their last tokens alone) cost 37 % more time per
document on the CPU (bench.open_set, 512 queries, parallel 8): the second decode reads
every weight again for one token per document. Reading h back from the logits costs a
(documents x rows) by (rows x width) product on the host, done on one BLAS thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_header import open_gguf
from shiftdown.errors import ModelError

# The positions whose states the familiarity score reads: the answer position and the
# one before it (the cue's last token). Measured on the open intent protocol
# (docs/performance.md): on seed 0 the pair finds more unknown intents at 5 % false flags
# than the answer position alone (AUROC 0.885 against 0.871), on seed 1 as many (0.878
# against 0.880); the two positions before them add nothing. The second output row
# costs about 7 % of a decode of one document on the CPU, about 1 % at eight per decode.
STATE_POSITIONS = 2

# Rows of the output matrix the inverse is solved on: well over the width of any model
# this serves (576 for SmolLM2-135M, 4,096 for an 8B), few enough to keep it small.
ROWS = 4096


def one_blas_thread() -> None:
    """Keep NumPy's BLAS to one thread in this process, for good.

    llama.cpp's threads own the cores. BLAS threads woken for the host's small products
    (the read-back below, the familiarity distance) go on spinning into the next decode:
    on 2 cores that made a document 37 % slower to classify instead of 4 %.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


# Least ratio of the smallest to the largest singular value of the chosen rows. The
# logits come in float32, and the read-back's relative error grows with the condition
# number: rows with a ratio of 5e-8 (condition 2e7) passed a rank test and read states
# back 17 % off; at 1e-3 the error stays under a thousandth.
MIN_SINGULAR_RATIO = 1e-3
# Other seeded choices of rows tried before giving up.
SEEDS_TRIED = 4


def every_blas_thread() -> AbstractContextManager[object]:
    """Within it, NumPy's BLAS may use every core (a fit's products, once no decode
    runs); ``one_blas_thread`` holds again after it."""
    from threadpoolctl import threadpool_limits

    limits: AbstractContextManager[object] = threadpool_limits(os.cpu_count() or 1, user_api="blas")
    return limits


class OutputInverse:
    """Maps rows of full-vocabulary logits back to the hidden states they came from.

    Only the chosen rows of the output matrix are dequantized (4,096 of a 128k
    vocabulary: the whole matrix of an 8B model in float32 is 2 GB), and one SVD of them
    gives both the conditioning test and the inverse.
    """

    def __init__(self, gguf_path: str | Path, n_vocab: int, seed: int = 0) -> None:

        one_blas_thread()

        reader = open_gguf(Path(gguf_path))
        tensors = {t.name: t for t in reader.tensors}
        tensor = tensors.get("output.weight") or tensors.get("token_embd.weight")
        if tensor is None:
            raise ModelError(f"{gguf_path}: no output matrix to read hidden states back from")
        arch = _field(reader, "general.architecture")
        self.softcap = _number(reader, f"{arch}.final_logit_softcapping", 0.0)
        self.scale = _number(reader, f"{arch}.logit_scale", 1.0)
        width, n_rows = (int(x) for x in tensor.shape[:2])
        if n_rows != n_vocab:
            raise ModelError(
                f"{gguf_path}: the output matrix has {n_rows} rows, the vocabulary {n_vocab}"
            )
        rows = min(n_vocab, max(ROWS, 2 * width))
        ratio = 0.0
        for attempt in range(SEEDS_TRIED):
            self.rows = np.sort(np.random.default_rng(seed + attempt).permutation(n_vocab)[:rows])
            gram = _gram(_row_chunks(gguf_path, tensor, self.rows, width))
            try:
                gram_inverse = np.linalg.inv(gram)
            except np.linalg.LinAlgError:
                ratio = 0.0
                continue
            # The singular values of the rows are the square roots of the Gram matrix's
            # eigenvalues; its largest and its inverse's largest, by power iteration
            # (a full eigendecomposition's copy and workspace cost more than the rest).
            ratio = float(np.sqrt(1.0 / (_largest_eig(gram) * _largest_eig(gram_inverse))))
            if ratio >= MIN_SINGULAR_RATIO:
                break
        else:
            raise ModelError(
                f"{gguf_path}: the output matrix is too poorly conditioned to read hidden "
                f"states back (smallest to largest singular value {ratio:.1e} on {rows} rows, "
                f"at least {MIN_SINGULAR_RATIO:g} needed, {SEEDS_TRIED} choices of rows "
                "tried): this model cannot have a familiarity score"
            )
        # h = (W_S^T W_S)^-1 W_S^T · logits_S; stored transposed, W_S (W_S^T W_S)^-1, for a
        # (documents x rows) product. The normal equations rather than an SVD: a Gram
        # matrix (width x width) instead of the SVD's copies and workspace of the rows,
        # less than half the start-up memory on a 128k-vocabulary model.
        # The rows are read a second time, a chunk at a time, rather than held through
        # the inversion: the start-up peak is then the Gram matrix's, not the rows' too.
        del gram
        self.inverse = np.empty((rows, width), dtype=np.float32)
        done = 0
        for block in _row_chunks(gguf_path, tensor, self.rows, width):
            self.inverse[done : done + len(block)] = block.astype(np.float64) @ gram_inverse
            done += len(block)
        self.width = width
        self.singular_ratio = ratio

    def states(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Hidden states (documents x width) from the logits of ``rows`` (documents x
        rows), undoing a soft cap and a logit scale where the model applies them."""
        z = np.asarray(logits, dtype=np.float32)
        if self.softcap:
            z = self.softcap * np.arctanh(np.clip(z / self.softcap, -0.999999, 0.999999))
        if self.scale != 1.0:
            z = z / self.scale
        result: npt.NDArray[np.float32] = z @ self.inverse
        return result


def _field(reader: object, key: str) -> object:
    field = getattr(reader, "fields", {}).get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if value.dtype == np.uint8:
        return bytes(value).decode("utf-8")
    return value[0]


def _number(reader: object, key: str, default: float) -> float:
    value = _field(reader, key)
    return default if value is None else float(value)  # type: ignore[arg-type]


def _largest_eig(matrix: npt.NDArray[np.floating[Any]], steps: int = 100) -> float:
    """The largest eigenvalue of a symmetric positive definite matrix, by power
    iteration from a seeded start (a Rayleigh quotient: never above the true one)."""
    v = np.random.default_rng(0).standard_normal(len(matrix))
    for _ in range(steps):
        v = matrix @ v
        v /= np.linalg.norm(v)
    return float(v @ matrix @ v)


def _gram(chunks: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """W^T W in float64, accumulated over chunks of rows (no copy of W held)."""
    gram: npt.NDArray[np.float64] | None = None
    for chunk in chunks:
        block = chunk.astype(np.float64)
        gram = block.T @ block if gram is None else gram + block.T @ block
    assert gram is not None
    return gram


# Rows dequantized, or converted to float64, at a time.
_CHUNK = 1024


def _row_chunks(
    path: str | Path, tensor: object, rows: npt.NDArray[np.intp], width: int
) -> Iterator[npt.NDArray[np.float32]]:
    """Rows ``rows`` of a GGUF matrix in float32, ``_CHUNK`` at a time, reading and
    dequantizing only those. Read with pread, not through the reader's map of the file:
    picking rows out of a map faults in the pages around each (the kernel maps 64 KB a
    fault), which on a 128k-vocabulary matrix was the whole file."""
    import gguf

    n_rows = int(tensor.data.shape[0])  # type: ignore[attr-defined]
    row_bytes = int(tensor.n_bytes) // n_rows  # type: ignore[attr-defined]
    offset = int(tensor.data_offset)  # type: ignore[attr-defined]
    kind = tensor.tensor_type  # type: ignore[attr-defined]
    dtype = tensor.data.dtype  # type: ignore[attr-defined]
    with open(path, "rb") as f:
        fd = f.fileno()
        for i in range(0, len(rows), _CHUNK):
            chunk = rows[i : i + _CHUNK]
            raw = b"".join(os.pread(fd, row_bytes, offset + int(r) * row_bytes) for r in chunk)
            picked = np.frombuffer(raw, dtype=dtype).reshape(len(chunk), -1)
            data = gguf.quants.dequantize(picked, kind)
            yield np.asarray(data, dtype=np.float32).reshape(-1, width)
