"""The check an exported fine-tune passes before its manifest is written: on a few
training examples, the label-code logits llama.cpp serves from the exported files agree
with those of the trained torch model.

A layout convention broken on the way to GGUF (a rotary permutation, a tensor name, a
norm offset) gives a file that loads and answers, only wrongly, by the order of the
logits themselves; this is where such a model is refused instead of served.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shiftdown.errors import ModelError

CHECK_FILE = "export-check.json"
# Largest difference on the label codes, as a share of the largest code logit. llama.cpp
# computes in F16 and quantized types, torch in fp32: on the bundled Q4_1 base, an
# adapter served on it measured 0.030 and a full fine-tune's F16 export 0.004; a broken
# layout is off by the order of the logits (docs/bring-your-own-model.md).
TOLERANCE = 0.1


def served_code_logits(
    model: Path, adapter: Path | None, probes: Sequence[Sequence[int]], codes: Sequence[int]
) -> list[list[float]]:
    """llama.cpp's logits of the label codes after each token sequence in ``probes``."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(
        str(model),
        lora_path=str(adapter) if adapter else None,
        n_ctx=max(512, max(len(p) for p in probes) + 8),
        verbose=False,
    )
    try:
        out = []
        for ids in probes:
            llm.reset()  # type: ignore[no-untyped-call]
            llm.eval(list(ids))
            pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            row = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
            logits = np.ctypeslib.as_array(row, (llm.n_vocab(),))
            out.append([float(logits[c]) for c in codes])
        return out
    finally:
        llm.close()


def code_error(served: Sequence[Sequence[float]], trained: Sequence[Sequence[float]]) -> float:
    """Largest difference over the probes, as a share of the largest trained logit."""
    got, want = np.asarray(served), np.asarray(trained)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def check_export(
    out_dir: Path,
    model: Path,
    adapter: Path | None,
    probes: list[dict[str, Any]],
    codes: Sequence[int],
) -> dict[str, Any]:
    """Compare what llama.cpp serves from ``model`` (+ ``adapter``) with the trained
    model's ``probes``; write both to ``CHECK_FILE`` and return the manifest's entry.
    Past ``TOLERANCE``, a ModelError: the export is not served."""
    served = served_code_logits(model, adapter, [p["ids"] for p in probes], codes)
    error = code_error(served, [p["logits"] for p in probes])
    record = {"probes": probes, "served": served, "max_error": error}
    (out_dir / CHECK_FILE).write_text(json.dumps(record), encoding="utf-8")
    if error > TOLERANCE:
        raise ModelError(
            f"the exported model disagrees with the trained one by {error:.3f} of the largest "
            f"label logit on {len(probes)} training examples (tolerance {TOLERANCE}): its "
            f"layout is wrong for this architecture; not written ({out_dir / CHECK_FILE})"
        )
    return {
        "file": CHECK_FILE,
        "probes": len(probes),
        "max_error": round(error, 5),
        "tolerance": TOLERANCE,
    }
