"""What the familiarity score's read-back inverse costs a worker at start-up, on a
synthetic GGUF with a large vocabulary: peak memory and time, today's way (only the
kept rows of the output matrix dequantized, one SVD) against the way before (the whole
matrix dequantized to float32, then a rank test and a pseudo-inverse, two SVDs),
measured in the same run, each in a fresh process.

The file holds just the output matrix (vocabulary x width, quantized): the part of a
model that the inverse reads, so the ratio to the file's size is the worst case (a real
model's file adds its blocks, which the inverse never touches).

    python -m bench.inverse_memory [--vocab 128256] [--width 4096] [--qtype Q8_0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.table import print_table

# Rows quantized at a time while the file is written (the whole matrix in float32 would
# be the very cost under test).
WRITE_ROWS = 8192

# The peak is read from /proc (VmHWM, this process's own), not from getrusage: a child's
# ru_maxrss starts at its parent's peak when forked, and the parent wrote the matrix.
_MEASURE = """
import json, sys, time
import numpy as np
from models.hidden_state import OutputInverse

def hwm_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

path, vocab, way = sys.argv[1], int(sys.argv[2]), sys.argv[3]
before = hwm_kb()
start = time.perf_counter()
if way == "rows":
    inverse = OutputInverse(path, vocab)
    width = inverse.width
else:
    import gguf
    from models.hidden_state import ROWS
    tensor = gguf.GGUFReader(path).tensors[0]
    width = int(tensor.shape[0])
    whole = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    whole = np.asarray(whole, dtype=np.float32).reshape(vocab, width)
    rows = np.sort(np.random.default_rng(0).permutation(vocab)[: min(vocab, max(ROWS, 2 * width))])
    sub = whole[rows].astype(np.float64)
    assert np.linalg.matrix_rank(sub) == width
    inverse = np.linalg.pinv(sub).T.astype(np.float32)
seconds = time.perf_counter() - start
peak = hwm_kb()
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024}))
"""


def write_matrix(
    path: Path, vocab: int, width: int, qtype: str, blocks: int = 0, ff: int = 0, seed: int = 0
) -> Path:
    """A GGUF of one ``vocab`` x ``width`` output matrix in ``qtype``, random rows, and
    ``blocks`` transformer blocks' worth of zero weights beside it (a whole model's
    size; the inverse never reads them)."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, vocab, WRITE_ROWS):
        rows = min(WRITE_ROWS, vocab - start)
        block = (rng.standard_normal((rows, width)) / np.sqrt(width)).astype(np.float32)
        chunks.append(gguf.quants.quantize(block, kind))
    data = np.concatenate(chunks)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("output.weight", data, raw_dtype=kind)
    shapes = {"attn_qkvo": (4 * width, width), "ffn_gate_up_down": (3 * ff, width)}
    for b in range(blocks):
        for name, (rows, cols) in shapes.items():
            zeros = np.zeros((rows, cols // block_size * type_size), dtype=np.uint8)
            writer.add_tensor(f"blk.{b}.{name}.weight", zeros, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def measure(path: Path, vocab: int, way: str) -> dict[str, Any]:
    """Build the inverse ``way`` (rows | whole) in a fresh process; its figures."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(vocab), way],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--qtype", default="Q8_0")
    parser.add_argument(
        "--blocks", type=int, default=0, help="zero blocks beside it, for a whole model's size"
    )
    parser.add_argument("--ff", type=int, default=0, help="the blocks' feed-forward width")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shiftdown-inverse-") as folder:
        started = time.perf_counter()
        path = write_matrix(
            Path(folder) / "output.gguf", args.vocab, args.width, args.qtype, args.blocks, args.ff
        )
        written_s = time.perf_counter() - started
        file_mb = path.stat().st_size / 2**20
        rows = [(way, measure(path, args.vocab, way)) for way in ("whole", "rows")]
    result = {
        "vocab": args.vocab,
        "width": args.width,
        "qtype": args.qtype,
        "blocks": args.blocks,
        "file_mb": round(file_mb, 1),
        "write_s": round(written_s, 1),
        "ways": {way: {k: round(v, 2) for k, v in f.items()} for way, f in rows},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    beside = f" and {args.blocks} blocks" if args.blocks else ""
    print(
        f"output matrix {args.vocab} x {args.width} {args.qtype}{beside}: a {file_mb:.0f} MB "
        f"file (written in {written_s:.0f} s)"
    )
    whole = dict(rows)["whole"]
    print_table(
        ["inverse built from", "seconds", "peak RSS MB", "added MB", "added / file", "x before"],
        [
            [
                "the whole matrix (before)" if way == "whole" else "its kept rows (now)",
                f"{f['seconds']:.2f}",
                f"{f['peak_mb']:.0f}",
                f"{f['added_mb']:.0f}",
                f"{f['added_mb'] / file_mb:.2f}",
                f"{f['added_mb'] / whole['added_mb']:.3f}",
            ]
            for way, f in rows
        ],
    )


if __name__ == "__main__":
    main()
