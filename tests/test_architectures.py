"""The SLM the user brings: each fine-tunable architecture, with its family's real
tokenizer, is fine-tuned, exported, merged and served the way transformers computes it;
the rest are refused before training, and an adapter for another architecture is an
error at load, not a crash.

The models are tiny and random (``tests.tiny_arch``): what is checked is the layout of
every tensor, which a wrong permutation, name or offset changes by the order of the
logits themselves.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DEMO, ROOT
from tests.tiny_arch import (
    CASES,
    TOKENIZERS,
    llama_logits,
    make_model,
    relative_error,
    torch_logits,
    torch_model,
    vocab_file,
)

# llama.cpp against torch: F16 storage and another summation order (llama is 0.003).
TOLERANCE = 1e-2
LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
TEXT = "I still have not received my new card, what should I do?"


def banking_labels() -> list[str]:
    data = json.loads((DEMO / "categories.json").read_text())
    return list(data if isinstance(data, list) else data["labels"])


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_label_coding_takes_each_label_s_own_word_in_every_real_tokenizer(
    tokenizer: str,
) -> None:
    from llama_cpp import Llama

    from models.coding import FINETUNE_TEMPLATE, PromptTemplate, Vocab, _words

    llm = Llama(str(vocab_file(tokenizer)), vocab_only=True, verbose=False)
    vocab = Vocab(llm)
    labels = [str(label) for label in banking_labels()]
    codes = vocab.codes(labels)
    assert len(set(codes)) == len(codes) == 77
    pieces = [llm.detokenize([code]).decode("utf-8", "replace").strip().lower() for code in codes]
    # The code is the first piece of one of the label's words (" exch" for exchange_rate
    # in a 32k SentencePiece vocabulary), unless every such piece was taken.
    own = [
        bool(piece) and any(w.lower().startswith(piece) for w in _words(label))
        for label, piece in zip(labels, pieces, strict=True)
    ]
    # SentencePiece once coded every label by a bare "▁" and its leftovers (0 of 77).
    assert sum(own) >= 65, f"{sum(own)} of 77 labels coded by a piece of their own words"
    prefix, suffix = PromptTemplate(FINETUNE_TEMPLATE).split(labels)
    prompt = vocab.encode_fixed(prefix, True) + vocab.encode_document(TEXT)
    assert len(prompt) > 5 and vocab.encode_fixed(suffix, False)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case's tiny base, made once per module as it is asked for."""
    folder = tmp_path_factory.mktemp("bases")
    made: dict[str, Path] = {}

    class Lazy(dict[str, Path]):
        def __missing__(self, key: str) -> Path:
            made[key] = make_model(CASES[key], folder / key / f"tiny-{key}.gguf")
            return made[key]

    return Lazy()


def teacher_rows() -> list[tuple[str, str]]:
    with (DEMO / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in LABELS]
    return rows[:48]


def tokens_of(base: Path) -> list[int]:
    from llama_cpp import Llama

    return list(Llama(str(base), vocab_only=True, verbose=False).tokenize(TEXT.encode()))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_each_architecture_fine_tunes_exports_and_serves_like_torch(
    case: str, bases: dict[str, Path], tmp_path: Path
) -> None:
    # One test per architecture, so that each tiny base is read by transformers once
    # (a 262k-token vocabulary costs it 20 s).
    import copy

    import torch

    from models.registry import load_model_dir
    from models.served import served_files
    from models.training.architectures import ARCHITECTURES
    from models.training.export_check import code_error, served_code_logits
    from models.training.finetune import finetune
    from models.training.gguf_export import export_gguf
    from models.training.train_process import FinetuneConfig

    base = bases[case]
    tokens = tokens_of(base)
    reference = torch_model(base)
    # The base itself: llama.cpp and transformers read the written file alike.
    before = torch_logits(reference, tokens)
    assert relative_error(llama_logits(base, tokens), before) <= TOLERANCE
    arch = CASES[case].arch
    cfg = reference.config
    shape = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)

    # A full fine-tune's export: every weight moved, norms included.
    full = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in full.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    moved = torch_logits(full, tokens)
    assert relative_error(before, moved) > 0.2
    export_gguf(base, full.state_dict(), tmp_path / "full-f16.gguf", ARCHITECTURES[arch], *shape)
    assert relative_error(llama_logits(tmp_path / "full-f16.gguf", tokens), moved) <= TOLERANCE

    rows = teacher_rows()
    # Twice: every projection (the default), then the attention's query and key alone,
    # whose rotary row order would not show behind the rest.
    attention = ("qkv_proj",) if arch == "phi3" else ("q_proj", "k_proj")
    for targets in (None, attention):
        config = FinetuneConfig(
            epochs=2, lr=3e-2, batch_size=16, lora_dropout=0.0, lora_targets=targets
        )
        out = tmp_path / ("model" if targets is None else "attention")
        manifest = finetune(base, rows[:32], LABELS, out, config, heldout=rows[32:])
        assert manifest.base_model is not None and manifest.base_model.architecture == arch
        assert manifest.base_model.path == str(base.resolve())
        if arch == "phi3" and targets is None:
            assert manifest.adapted_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        served_base, adapter, _ = load_model_dir(out)
        assert served_base == base and adapter is not None
        # The trained torch model (with its adapter) on a few training examples, and
        # what llama.cpp serves: base + adapter (finetune's own check), the merged file.
        check = json.loads((out / "export-check.json").read_text())
        probes = [p["ids"] for p in check["probes"]]
        trained = [p["logits"] for p in check["probes"]]
        assert manifest.label_codes is not None
        codes = manifest.label_codes
        # The adapter moves the label logits far past the tolerance: a wrong layout shows.
        assert code_error(served_code_logits(base, None, probes, codes), trained) > 0.2
        merged, _ = served_files(str(base), str(adapter), "f16")
        errors = {
            "adapter": code_error(served_code_logits(base, adapter, probes, codes), trained),
            "merged": code_error(served_code_logits(Path(merged), None, probes, codes), trained),
        }
        print(case, targets, errors)
        assert max(errors.values()) <= TOLERANCE, errors
    out = tmp_path / "model"

    # Served from another working directory, the base found where it was trained.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "labels.json").write_text(json.dumps(LABELS))
    env = {
        **os.environ,
        "SHIFTDOWN_DATABASE_URL": f"sqlite:///{elsewhere / 'eval.db'}",
        # The merge made above, from its cache beside the adapter.
        "SHIFTDOWN_SERVE_TYPE": "f16",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "--model", str(out), "--task", f"tiny-{case}",
         "--taxonomy", "labels.json", "--data", str(out / "heldout.csv"), "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["documents"] == len(rows) - 32


def test_an_architecture_finetune_cannot_train_is_refused_before_training(
    tmp_path: Path,
) -> None:
    import gguf

    from models.training.finetune import finetune
    from shiftdown.errors import ModelError

    base = tmp_path / "mistral3.gguf"
    writer = gguf.GGUFWriter(str(base), "mistral3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="architecture 'mistral3' is not one finetune supports"):
        finetune(base, [("hello", "a")], ["a"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


REFUSED_ADAPTER = """
import shutil, sys
import numpy as np
from pathlib import Path
from models.base import default_gguf_path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.merge import read_lora
from models.training.gguf_adapter import write_adapter
from shiftdown.errors import ModelError

pairs = read_lora(Path("demo/banking77-lora/adapter.gguf"))
tensors = {}
for name, pair in pairs.items():
    tensors[name + ".lora_a"], tensors[name + ".lora_b"] = pair.a, pair.b
adapter = Path(sys.argv[1])
write_adapter(adapter, tensors, alpha=32, architecture="qwen2")
spec = ModelSpec(str(default_gguf_path()), ("card", "cash"), adapter_path=str(adapter))
try:
    Classifier(spec, RuntimeOptions(n_ctx=512, serve_type="adapter")).classify("my card")
except ModelError as exc:
    print(exc)
    sys.exit(3)
"""


def test_an_adapter_for_another_architecture_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", REFUSED_ADAPTER, str(tmp_path / "adapter.gguf")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Before: signal 11 (-11) at the first decode, with no message.
    assert result.returncode == 3, (result.returncode, result.stderr[-1500:])
    assert "is for a qwen2 model and its base" in result.stdout


def test_relative_error_is_a_share_of_the_largest_logit() -> None:
    assert relative_error(np.array([1.0, -4.0]), np.array([1.0, -4.0])) == 0
    assert relative_error(np.array([1.2, -4.0]), np.array([1.0, -4.0])) == pytest.approx(0.05)


@pytest.mark.slow
def test_finetune_of_a_custom_base_prints_what_it_adapted_and_fits_the_familiarity_score(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    # The fit inside finetune looked for the base beside the model only, and warned.
    from click.testing import CliRunner

    from cli.main import cli
    from shiftdown.manifest import ModelManifest

    base = bases["mistral"]
    data = tmp_path / "train.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(teacher_rows())
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    out = tmp_path / "model"
    result = CliRunner().invoke(
        cli,
        ["finetune", "--base", str(base), "--data", str(data), "--taxonomy",
         str(tmp_path / "labels.json"), "--out", str(out), "--epochs", "1", "--no-merged"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "adapted: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in result.output
    assert "warning" not in result.output.lower()
    manifest = ModelManifest.load(out / "manifest.json")
    assert manifest.familiarity is not None and (out / manifest.familiarity.file).is_file()


@pytest.mark.slow
def test_a_full_fine_tune_of_a_fused_architecture_is_served(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    # finetune --full end to end on Phi-3 (fused projections, no rotary permutation):
    # its export used to stop at KeyError: 'attn_qkv'.
    from models.classifier import Classifier, ModelSpec, RuntimeOptions
    from models.registry import load_model_dir
    from models.training.finetune import finetune
    from models.training.train_process import FinetuneConfig

    rows = teacher_rows()
    out = tmp_path / "full"
    config = FinetuneConfig(epochs=1, lr=1e-3, batch_size=16, full=True)
    manifest = finetune(bases["phi3"], rows[:32], LABELS, out, config)
    assert manifest.adapted_modules == ["all"] and manifest.serve == "q8_0"
    served, adapter, loaded = load_model_dir(out)
    assert served == out / "model-q8_0.gguf" and adapter is None
    spec = ModelSpec(str(served), tuple(LABELS), manifest=loaded)
    clf = Classifier(spec, RuntimeOptions(n_ctx=512))
    assert clf.classify(rows[40][0]).label in LABELS


def test_hyperparameters_transformers_does_not_read_from_a_gguf_are_checked() -> None:
    transformers = pytest.importorskip("transformers")
    from models.training.architectures import config_mismatches

    # Qwen3 with a head size other than transformers' default of 128.
    fields: dict[str, Any] = {"general.architecture": "qwen3", "qwen3.attention.key_length": 64}
    assert config_mismatches(transformers.Qwen3Config(), fields) == [
        "head size: transformers uses 128, the GGUF says 64"
    ]
    assert config_mismatches(transformers.Qwen3Config(head_dim=64), fields) == []
    # Gemma 2 27B's query scale (hidden / heads = 144) and another final soft-cap.
    gemma = {
        "general.architecture": "gemma2",
        "gemma2.attention.key_length": 128,
        "gemma2.final_logit_softcapping": 20.0,
    }
    found = config_mismatches(transformers.Gemma2Config(head_dim=128), gemma)
    assert [m.split(":")[0] for m in found] == ["query scale", "final soft-cap"]
