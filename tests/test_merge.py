"""The torch-free merge of a LoRA adapter into its base GGUF, checked against llama.cpp
applying the same adapter at run time, and the cache that serves it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from llama_cpp import Llama

from bench.queries import banking_labelled
from bench.tiny_model import write_tiny_gguf
from cli.main import cli
from models.base import default_gguf_path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.merge import merge, merge_to_f16, read_lora, same_grid
from models.registry import load_model_dir
from models.served import find_merged, merged_file_name, served_files
from models.training.gguf_adapter import write_adapter
from shiftdown.manifest import ModelManifest
from shiftdown.settings import DEFAULT_SERVE_TYPE
from tests.conftest import ROOT

DEMO_MODEL = ROOT / "demo" / "banking77-lora"


def random_adapter(
    path: Path, shapes: dict[str, tuple[int, int]], rank: int = 4, size: float = 0.05
) -> Path:
    """A LoRA adapter of random pairs for the base tensors ``shapes`` (rows, columns)."""
    rng = np.random.default_rng(7)
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for name, (rows, cols) in shapes.items():
        tensors[f"{name}.lora_a"] = rng.standard_normal((rank, cols)).astype(np.float32) * size
        tensors[f"{name}.lora_b"] = rng.standard_normal((rows, rank)).astype(np.float32) * size
    write_adapter(path, tensors, alpha=2.0 * rank, architecture="llama")
    return path


def top1(model: Path, tokens: list[int], adapter: Path | None = None) -> npt.NDArray[np.intp]:
    llm = Llama(
        str(model),
        lora_path=str(adapter) if adapter else None,
        n_ctx=512,
        logits_all=True,
        n_threads=2,
        verbose=False,
    )
    llm.eval(tokens)
    return np.argmax(np.asarray(llm.scores[: len(tokens)]), axis=1)


def test_merged_f16_predicts_what_the_adapter_at_run_time_does(tmp_path: Path) -> None:
    # The base dequantized to F16 on both sides: llama.cpp then computes the same
    # products in the same precision, W·x + B·(A·x) at run time against (W + B·A)·x
    # merged. (Against the Q4_1 base, whose activations llama.cpp rounds to 8 bits, even
    # the base's own F16 predicts only 97 % of these tokens alike.)
    base = tmp_path / "base-f16.gguf"
    merge_to_f16(default_gguf_path(), None, base)
    # Every kind of projection, in the first and the last block: q and k rows are in
    # GGUF's rotary order in both files, so a wrong orientation would show.
    shapes = {
        f"blk.{i}.{kind}.weight": shape
        for i in (0, 29)
        for kind, shape in {
            "attn_q": (576, 576),
            "attn_k": (192, 576),
            "ffn_up": (1536, 576),
            "ffn_down": (576, 1536),
        }.items()
    }
    adapter = random_adapter(tmp_path / "adapter.gguf", shapes)
    assert read_lora(adapter)["blk.0.attn_q.weight"].scale == 2.0  # alpha 8 / rank 4
    merged = tmp_path / "merged-f16.gguf"
    merge(base, adapter, merged, "f16")

    text = (ROOT / "README.md").read_text()[:2000]
    tokens = Llama(str(base), vocab_only=True, verbose=False).tokenize(text.encode())[:200]
    at_run_time = top1(base, tokens, adapter)
    # The adapter changes the model, so agreement below is not the base agreeing with itself.
    assert (top1(base, tokens) != at_run_time).mean() > 0.05
    assert (top1(merged, tokens) == at_run_time).mean() >= 0.99


def test_the_merge_needs_no_torch_and_takes_seconds(tmp_path: Path) -> None:
    out = tmp_path / "demo-q8_0.gguf"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from models.base import default_gguf_path\n"
        "from models.merge import merge\n"
        "start = time.perf_counter()\n"
        f"merge(default_gguf_path(), Path({str(DEMO_MODEL / 'adapter.gguf')!r}), "
        f"Path({str(out)!r}), 'q8_0', 2)\n"
        "print(time.perf_counter() - start)\n"
        "heavy = {'torch', 'transformers', 'peft'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seconds, heavy = done.stdout.splitlines()[-2:]
    assert heavy == "[]"
    assert float(seconds) <= 30, seconds
    assert out.stat().st_size > 100 * 2**20


def tiny_with_adapter(folder: Path) -> tuple[Path, Path]:
    base = write_tiny_gguf(folder / "tiny.gguf")
    shapes = {"blk.0.attn_q.weight": (32, 32), "blk.0.ffn_down.weight": (32, 32)}
    adapter = random_adapter(folder / "model" / "adapter.gguf", shapes, size=0.3)
    return base, adapter


def test_the_served_form_is_merged_once_and_found_again(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    base, adapter = tiny_with_adapter(tmp_path)
    assert served_files(str(base), str(adapter), "adapter") == (str(base), str(adapter))
    assert served_files(str(base), None, "q8_0") == (str(base), None)

    # What a merge killed mid-way leaves behind is cleared by the next one.
    stale = tmp_path / "model" / ".served" / f".merge-{merged_file_name(base, adapter, 'q8_0')}-x"
    stale.mkdir(parents=True)
    (stale / "merged-f16.gguf").write_bytes(b"half a model")
    path, none = served_files(str(base), str(adapter), "q8_0")
    assert none is None and Path(path).parent == tmp_path / "model" / ".served"
    assert not stale.exists()
    made = Path(path).stat().st_mtime_ns
    assert served_files(str(base), str(adapter), "q8_0")[0] == path
    assert Path(path).stat().st_mtime_ns == made
    # A retrained adapter is another model: another name, never the old file.
    random_adapter(adapter, {"blk.0.attn_q.weight": (32, 32)}, size=0.2)
    assert find_merged(base, adapter, "q8_0") is None
    assert merged_file_name(base, adapter, "q8_0") != Path(path).name


def test_workers_starting_together_merge_once(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    base, adapter = tiny_with_adapter(tmp_path)
    log = tmp_path / "merges.log"
    # Each process counts the merges it runs, and reports the file it would serve.
    script = (
        "import time\n"
        "import models.served as served\n"
        "real = served.merge\n"
        "def counted(*args, **kwargs):\n"
        f"    open({str(log)!r}, 'a').write('merge\\n')\n"
        # Long enough that the three overlap: without the lock each would merge.
        "    time.sleep(2)\n"
        "    real(*args, **kwargs)\n"
        "served.merge = counted\n"
        f"print(served.served_files({str(base)!r}, {str(adapter)!r}, 'q4_0')[0])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    paths = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(paths) == 1 and log.read_text().count("merge") == 1
    served = Path(paths.pop())
    assert Llama(str(served), n_ctx=64, verbose=False).n_vocab() > 0
    assert not list(served.parent.glob(".merge-*")), "no temporary file is left behind"


@pytest.mark.slow
def test_the_served_demo_model_gives_the_adapters_labels() -> None:
    """The merged form the workers serve by default, against the demo adapter applied at
    run time, on the whole BANKING77 test split (3,080 queries)."""
    base, adapter, manifest = load_model_dir(DEMO_MODEL)
    assert adapter is not None
    spec = ModelSpec(str(base), tuple(manifest.labels or ()), str(adapter), manifest)
    docs = banking_labelled()
    assert len(docs) == 3080
    results = {}
    for form in ("adapter", DEFAULT_SERVE_TYPE):
        clf = Classifier(spec, RuntimeOptions(n_threads=2, serve_type=form))
        assert (clf.served_path == str(base)) == (form == "adapter")
        results[form] = [clf.classify(text) for text, _ in docs]
        del clf
    as_trained, served = results["adapter"], results[DEFAULT_SERVE_TYPE]
    differ = [a for a, b in zip(as_trained, served, strict=True) if a.label != b.label]
    accuracy = {
        form: sum(r.label == gold for r, (_, gold) in zip(found, docs, strict=True)) / len(docs)
        for form, found in results.items()
    }
    assert abs(accuracy[DEFAULT_SERVE_TYPE] - accuracy["adapter"]) <= 0.003, accuracy
    # Measured: 22 of 3,080 (99.3 % alike), as many as for an exact F32 merge, because
    # at run time llama.cpp rounds the activations that meet the Q4_1 base to 8 bits:
    # every such document is one the adapter itself is unsure of (its top probability
    # 0.20 to 0.53, where the median document's is above 0.99).
    assert len(differ) <= 0.01 * len(docs), len(differ)
    assert all(r.confidence < 0.6 for r in differ), [r.confidence for r in differ]


def copy_demo_model(folder: Path) -> Path:
    model = folder / "model"
    model.mkdir()
    for name in ("manifest.json", "adapter.gguf"):
        shutil.copy(DEMO_MODEL / name, model / name)
    return model


def test_register_makes_the_served_form_and_export_pins_a_type(
    tmp_path: Path, use_settings: Callable[..., None], sqlite_url: str
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    model = copy_demo_model(tmp_path)
    taxonomy = ROOT / "demo" / "banking77" / "categories.json"
    runner = CliRunner()
    done = runner.invoke(cli, ["tasks", "set", "bank", "--taxonomy", str(taxonomy)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["models", "register", str(model), "--task", "bank"])
    assert done.exit_code == 0, done.output
    base, adapter, _ = load_model_dir(model)
    assert adapter is not None
    made = find_merged(base, adapter, DEFAULT_SERVE_TYPE)
    assert made is not None and made.parent == model / ".served"
    assert f"served as {DEFAULT_SERVE_TYPE}: {made}" in done.output

    done = runner.invoke(cli, ["export", str(model), "--type", "q4_0", "--serve", "q4_0"])
    assert done.exit_code == 0, done.output
    manifest = ModelManifest.load(model / "manifest.json")
    assert manifest.serve == "q4_0" and manifest.merged == {"q4_0": "model-q4_0.gguf"}
    # Pinned: the directory now serves its own export; as trained it is base + adapter.
    assert load_model_dir(model)[:2] == (model / "model-q4_0.gguf", None)
    assert load_model_dir(model, as_trained=True)[:2] == (base, adapter)
    done = runner.invoke(cli, ["export", str(model), "--type", "q4_0", "--serve", "adapter"])
    assert done.exit_code == 0, done.output
    assert load_model_dir(model)[:2] == (base, adapter)


def test_a_merge_onto_the_bases_own_grid_is_flagged() -> None:
    adapter = DEMO_MODEL / "adapter.gguf"
    # Every projection the demo adapter updates is Q4_1 in the bundled base (docs/performance.md,
    # Served forms: why Q4_1 loses the adapter); Q8_0 is another grid.
    assert len(same_grid(default_gguf_path(), adapter, "q4_1")) == len(read_lora(adapter))
    assert same_grid(default_gguf_path(), adapter, "q8_0") == []
