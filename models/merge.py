"""Merge a GGUF LoRA adapter into its base GGUF, then quantize it, without torch.

Serving base + adapter costs llama.cpp two extra low-rank products per projection and
token (half the speed on CPU, and more on a GPU). The merged model does the same
arithmetic once, offline: every tensor of the base that gguf-py can dequantize is
dequantized, W + scale·B·A is added where the adapter has a pair, and the result is
written as F16 (1-D tensors, the norms, stay F32 as llama.cpp's converter keeps them).
llama.cpp's own quantizer (``llama_model_quantize``) then makes the served type.

Both files stay in GGUF's layout, so nothing is permuted: the adapter's B rows are
already in the base's (rotary) row order.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.gguf_header import open_gguf

logger = logging.getLogger(__name__)

# llama.cpp file types (enum llama_ftype) by the name `SHIFTDOWN_SERVE_TYPE` and
# `export --type` take. Q4_1 is here for the record of its defect (docs/performance.md,
# Served forms). The numbers are llama.h's, fixed because GGUF files record them; they
# are written out so that the training process, which writes GGUFs but must not load
# llama.cpp beside torch (models.training.train_process), can import this module
# (tests/test_train_process.py checks them against llama_cpp's).
FILE_TYPES = {
    "f16": 1,
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q4_k_m": 15,
    "q4_0": 2,
    "q4_1": 3,
}


@dataclass(frozen=True)
class LoraPair:
    """One adapted matrix: ΔW = scale · B · A, in numpy's (rows, columns) order."""

    a: npt.NDArray[np.float32]
    b: npt.NDArray[np.float32]
    scale: float

    def delta(self) -> npt.NDArray[np.float32]:
        """The update to add to the base matrix."""
        return (self.b @ self.a) * np.float32(self.scale)


def read_lora(adapter: Path, scale: float = 1.0) -> dict[str, LoraPair]:
    """The adapter's pairs by the base tensor they update (``blk.0.attn_q.weight``).

    llama.cpp scales each product by ``scale · alpha / rank`` (no alpha: ``scale``), the
    rank being the number of rows of A; the merge does the same.
    """

    reader = open_gguf(adapter)
    field = reader.fields.get("adapter.lora.alpha")
    alpha = float(field.contents()) if field is not None else 0.0
    halves: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for tensor in reader.tensors:
        target, _, which = tensor.name.rpartition(".")
        if which not in ("lora_a", "lora_b"):
            raise ValueError(f"{adapter}: {tensor.name} is not a LoRA tensor")
        halves.setdefault(target, {})[which] = _float_array(tensor)
    pairs = {}
    for target, half in halves.items():
        if set(half) != {"lora_a", "lora_b"}:
            raise ValueError(f"{adapter}: {target} lacks one of lora_a and lora_b")
        a, b = half["lora_a"], half["lora_b"]
        rank = a.shape[0]
        pairs[target] = LoraPair(a, b, scale * alpha / rank if alpha else scale)
    return pairs


def _float_array(tensor: Any) -> npt.NDArray[np.float32]:
    """A reader tensor as float32 in numpy order, dequantized if it is quantized."""
    import gguf

    shape = [int(n) for n in reversed(tensor.shape)]
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(shape)


def _can_dequantize(qtype: Any) -> bool:
    import gguf

    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    return qtype in float_types or qtype in gguf.quants._type_traits


def f16_writer_like(reader: Any, out: Path) -> Any:
    """A GGUF writer for ``out`` holding every metadata field of ``reader``'s model, its
    file type F16: the architecture and tokenizer of a model whose tensors change."""
    import gguf

    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(out), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), field.types[0])
    writer.add_file_type(FILE_TYPES["f16"])
    return writer


def merge_to_f16(
    base: Path, adapter: Path | None, out: Path, scale: float = 1.0, reader: Any = None
) -> int:
    """Write base + adapter as one GGUF at ``out`` (F16 matrices); returns tensors merged.

    With no adapter, the base alone, dequantized.

    Tensors are streamed one at a time, so memory holds one dequantized matrix, not the
    model. A tensor of a type gguf-py cannot dequantize is copied as stored, unless the
    adapter updates it (then the merge cannot be exact, and it refuses). ``reader``: the
    base's, when already open (reading a 262k-token vocabulary takes gguf-py 25 s).
    """

    pairs = read_lora(adapter, scale) if adapter is not None else {}
    reader = reader if reader is not None else open_gguf(base)
    missing = sorted(set(pairs) - {t.name for t in reader.tensors})
    if missing:
        raise ValueError(f"{adapter} updates tensors {base} does not have: {missing[:3]}")
    writer = f16_writer_like(reader, out)
    if "general.alignment" in reader.fields:
        # Written by the copy above; the writer must also pad to it.
        writer.data_alignment = int(reader.fields["general.alignment"].contents())
    plan: list[tuple[Any, np.dtype[Any] | None]] = []
    for tensor in reader.tensors:
        shape = [int(n) for n in reversed(tensor.shape)]
        if not _can_dequantize(tensor.tensor_type):
            if tensor.name in pairs:
                raise ValueError(
                    f"{base}: cannot dequantize {tensor.name} ({tensor.tensor_type.name}) to merge"
                )
            writer.add_tensor_info(
                tensor.name,
                tensor.data.shape,
                tensor.data.dtype,
                tensor.data.nbytes,
                raw_dtype=tensor.tensor_type,
            )
            plan.append((tensor, None))
            continue
        out_type = np.dtype(np.float32 if len(shape) == 1 else np.float16)
        nbytes = int(np.prod(shape)) * out_type.itemsize
        writer.add_tensor_info(tensor.name, shape, out_type, nbytes)
        plan.append((tensor, out_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, dtype in plan:
        if dtype is None:
            writer.write_tensor_data(np.ascontiguousarray(tensor.data))
            continue
        array = _float_array(tensor)
        if tensor.name in pairs:
            delta = pairs[tensor.name].delta()
            if delta.shape != array.shape:
                # llama.cpp stores an embedding's pair transposed; not merged here.
                raise ValueError(
                    f"{adapter}: update of {tensor.name} is {delta.shape}, the tensor {array.shape}"
                )
            array = array + delta
        writer.write_tensor_data(np.ascontiguousarray(array.astype(dtype)))
    writer.close()
    return len(pairs)


def quantize(source: Path, out: Path, kind: str, threads: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's quantizer (``kind`` from ``FILE_TYPES``).

    ``threads`` 0 lets llama.cpp use every core.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[kind]
    params.nthread = threads
    # A tensor the merge kept as stored (a type gguf-py cannot read) is already quantized.
    params.allow_requantize = True
    # llama.cpp logs a line per tensor (500 for a 135M model) through llama-cpp-python's
    # logger; a worker's log keeps its errors only.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    finally:
        log.setLevel(level)
    if code != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind} (code {code})")


def same_grid(base: Path, adapter: Path, kind: str, reader: Any = None) -> list[str]:
    """The adapted tensors that ``base`` already stores in ``kind``'s own block type.

    Quantizing base + a small update back onto the base's own grid rounds much of the
    update back to the base's values (docs/performance.md, Served forms: Q4_1 onto the
    Q4_1 base kept 63 % of the demo adapter's update, and 66.8 % accuracy against 91.4 %).
    """

    reader = reader if reader is not None else open_gguf(base)
    stored = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    # A k-quant mix (q4_k_m) quantizes most matrices to its block type (q4_k).
    block = kind.removesuffix("_m").removesuffix("_s")
    return sorted(name for name in read_lora(adapter) if stored.get(name) == block)


def merge(base: Path, adapter: Path, out: Path, kind: str, threads: int = 0) -> None:
    """Base + adapter as one GGUF of type ``kind`` at ``out``, written atomically.

    Every file is first written under a temporary name in ``out``'s folder and renamed,
    so a reader never sees half a model, and workers racing to make the same file each
    leave a whole one.
    """
    if kind not in FILE_TYPES:
        raise ValueError(f"unknown type {kind!r}: one of {', '.join(FILE_TYPES)}")
    reader = open_gguf(base)
    clash = same_grid(base, adapter, kind, reader) if kind != "f16" else []
    if clash:
        logger.warning(
            "%s stores %d of the adapted tensors in %s already: quantizing the merge back "
            "onto that grid rounds much of the adapter's update away; serve another type",
            base.name,
            len(clash),
            kind,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Named after the target, so that the served cache can clear what a killed merge
    # left behind (models.served).
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".merge-{out.name}-") as scratch:
        f16 = Path(scratch) / "merged-f16.gguf"
        merge_to_f16(base, adapter, f16, reader=reader)
        if kind == "f16":
            final = f16
        else:
            final = Path(scratch) / f"merged-{kind}.gguf"
            quantize(f16, final, kind, threads)
        os.replace(final, out)
