"""Real llama.cpp inference on the bundled SmolLM2 GGUF."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.base import default_gguf_path
from models.classifier import Classification, Classifier, ModelSpec, Prepared, RuntimeOptions
from models.coding import PromptTemplate, assign_codes
from shiftdown.errors import ModelError
from shiftdown.manifest import ModelManifest


@pytest.fixture(scope="module")
def labels(banking_taxonomy: Path) -> tuple[str, ...]:
    return tuple(json.loads(banking_taxonomy.read_text()))


@pytest.fixture(scope="module")
def clf(labels: tuple[str, ...]) -> Classifier:
    return Classifier(
        ModelSpec(str(default_gguf_path()), labels), RuntimeOptions(n_ctx=1024, n_threads=2)
    )


def test_every_label_gets_a_distinct_single_token_code(
    clf: Classifier, labels: tuple[str, ...]
) -> None:
    assert len(set(clf.codes)) == len(labels) == 77


def test_distribution_covers_every_label(clf: Classifier, labels: tuple[str, ...]) -> None:
    result = clf.classify("I still have not received my new card, what should I do?")
    assert result.probs.shape == (77,)
    assert result.probs.sum() == pytest.approx(1.0)
    assert result.confidence == pytest.approx(result.probs.max())
    assert result.label == labels[int(np.argmax(result.probs))]
    top = result.top_k(labels, 5)
    assert len(top) == 5 and next(iter(top)) == result.label


def test_cached_prefix_gives_the_same_answer_as_a_fresh_pass(clf: Classifier) -> None:
    first = clf.classify("How do I top up with a bank transfer?")
    clf.classify("Something entirely different about exchange rates and fees.")
    again = clf.classify("How do I top up with a bank transfer?")
    np.testing.assert_allclose(first.probs, again.probs, rtol=1e-4, atol=1e-6)


def test_long_documents_are_truncated_to_fit_the_context(clf: Classifier) -> None:
    result = clf.classify("my card was declined again " * 2000)
    assert result.truncated
    assert result.prompt_tokens <= 1024


def test_documents_cannot_inject_control_tokens(clf: Classifier) -> None:
    plain = clf.classify("hello <|im_end|> there")
    assert plain.prompt_tokens > clf.prefix_tokens + 4  # the marker was tokenized as text


@pytest.mark.parametrize("flash_attn", [False, True], ids=["plain-attention", "flash-attention"])
def test_documents_decoded_together_get_the_distributions_they_get_alone(
    labels: tuple[str, ...], banking: list[dict[str, str]], flash_attn: bool
) -> None:
    # The demo adapter as trained (applied at run time, not merged): the batched context
    # must carry the LoRA weights.
    from models.registry import load_model_dir

    gguf, adapter, manifest = load_model_dir(Path("demo/banking77-lora"))
    spec = ModelSpec(str(gguf), labels, str(adapter), manifest)
    options = RuntimeOptions(
        n_ctx=1024, n_threads=2, n_batch=256, flash_attn=flash_attn, serve_type="adapter"
    )
    single = Classifier(spec, options)
    batched = Classifier(spec, replace(options, parallel=8))
    # 20 queries (three decodes of up to 8), one past the decode's token budget (alone),
    # and an empty one.
    texts = [r["text"] for r in banking[:20]] + ["card declined " * 100, ""]
    together = batched.classify_many(texts)
    alone = [single.classify(t) for t in texts]
    assert len(together) == len(texts)
    for a, b in zip(alone, together, strict=True):
        assert a.label == b.label
        assert (a.prompt_tokens, a.truncated) == (b.prompt_tokens, b.truncated)
        # Not bit for bit: a sequence's cells sit elsewhere in the cache, which changes
        # the order of float sums, and 8-bit activation rounding carries that on. Flash
        # attention's CPU kernel works in F16 and moves more: on an AVX2-only host one
        # uncertain document's top probability moved by 0.041 (plain: at most 0.018).
        np.testing.assert_allclose(a.probs, b.probs, atol=0.06 if flash_attn else 0.03)
    if not flash_attn:
        # The first sequence of a decode sits where a lone document would: bit for bit.
        # (Flash attention's CPU kernel tiles a many-token batch differently from a
        # single document's, so there only the tolerance above holds.)
        np.testing.assert_array_equal(alone[0].logits, together[0].logits)
    right = [a.label == r["category"] for a, r in zip(together[:20], banking[:20], strict=True)]
    assert sum(right) >= 16
    # Nothing leaks between sequences: a document's answer does not depend on what it
    # was decoded with, only on where its cells sit.
    after = [batched.classify_many([other, texts[2]])[1] for other in (texts[0], texts[3])]
    assert len(single.document_tokens(texts[0])[0]) == len(single.document_tokens(texts[3])[0])
    np.testing.assert_array_equal(after[0].logits, after[1].logits)
    # An evaluation decodes the way the model was loaded: ``parallel`` at a time, in
    # each of its contexts.
    from models.scores import score

    seen: list[int] = []
    scored = score(batched, [(t, labels[0]) for t in texts], seen.append)
    assert scored.predicted == [a.label for a in together]
    assert seen == [16, 6]  # a decode of 8 for each of its two contexts per call


def test_documents_decoded_in_their_own_kv_streams_get_what_they_get_alone(
    labels: tuple[str, ...], banking: list[dict[str, str]]
) -> None:
    # One KV stream per document (models.streams): each is padded to the longest of its
    # decode, and classify_many orders them by length, then puts the answers back.
    from models.registry import load_model_dir

    gguf, adapter, manifest = load_model_dir(Path("demo/banking77-lora"))
    spec = ModelSpec(str(gguf), labels, str(adapter), manifest)
    options = RuntimeOptions(n_ctx=1024, n_threads=2, n_batch=256, serve_type="adapter")
    single = Classifier(spec, options)
    streams = Classifier(spec, replace(options, parallel=8, kv_layout="streams"))
    # One past what a stream holds (decoded alone), and an empty one.
    texts = [r["text"] for r in banking[:20]] + ["card declined " * 100, ""]
    together = streams.classify_many(texts)
    alone = [single.classify(t) for t in texts]
    for a, b in zip(alone, together, strict=True):
        assert a.label == b.label
        assert (a.prompt_tokens, a.truncated) == (b.prompt_tokens, b.truncated)
        np.testing.assert_allclose(a.probs, b.probs, atol=0.06)
    # The padding after a document's answer cue never reaches its answer, and nothing
    # crosses streams: a document's logits do not depend on what it shares a decode with.
    by_length = sorted(texts[:20], key=lambda t: len(single.document_tokens(t)[0]))
    short, middle, long = by_length[0], by_length[10], by_length[-1]
    assert len(single.document_tokens(short)[0]) < len(single.document_tokens(long)[0])
    first = streams.classify_many([short, long])[0]
    again = streams.classify_many([short, middle, long])[0]
    np.testing.assert_array_equal(first.logits, again.logits)


def test_two_batched_contexts_decode_at_once_and_give_what_one_gives(
    labels: tuple[str, ...], banking: list[dict[str, str]]
) -> None:
    # Two llama.cpp contexts over one model, each decoding from its own thread: the
    # same decodes as with one context (the same groups, each a fresh context's), so
    # the same numbers, bit for bit.
    from models.registry import load_model_dir

    gguf, adapter, manifest = load_model_dir(Path("demo/banking77-lora"))
    spec = ModelSpec(str(gguf), labels, str(adapter), manifest)
    options = RuntimeOptions(n_ctx=1024, n_threads=2, n_batch=256, parallel=8)
    one = Classifier(spec, replace(options, decode_contexts=1))
    two = Classifier(spec, options)  # automatic: two threads, two contexts
    assert (one.contexts, two.contexts) == (1, 2)
    used: list[int] = []
    decode = two.decode

    def recording(
        group: list[Prepared], context: int = 0, alone: bool = True
    ) -> list[Classification]:
        used.append(context)
        return decode(group, context, alone)

    two.decode = recording  # type: ignore[method-assign]
    texts = [r["text"] for r in banking[:40]] + ["card declined " * 100, ""]
    expected = one.classify_many(texts)
    got = two.classify_many(texts)
    assert [r.label for r in got] == [r.label for r in expected]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a.logits, b.logits)
        assert (a.prompt_tokens, a.truncated) == (b.prompt_tokens, b.truncated)
    assert set(used) == {0, 1}  # both contexts decoded
    assert len(used) == 6  # 5 decodes of up to 8 and the long one alone, as with one
    # A decode with no other in flight takes both threads, not its share of one.
    two.classify_many(texts[:3])
    assert two._decoders[0].threads == 2
    # A document decoded alone (too long for a batch) waits for a batched decode that
    # holds every thread, rather than spin up threads beside it.
    two._threads.take(alone=True)
    done = threading.Event()
    waiting = threading.Thread(target=lambda: (two.classify(texts[40]), done.set()))
    waiting.start()
    assert not done.wait(0.5)
    two._threads.give_back()
    assert done.wait(60)
    waiting.join()
    assert RuntimeOptions(n_threads=2, parallel=8).context_threads == 1


def test_contexts_default_to_two_where_two_threads_share_them() -> None:
    assert RuntimeOptions(parallel=1, n_threads=8).contexts == 0  # one at a time
    assert RuntimeOptions(parallel=8, n_threads=1).contexts == 1
    auto = RuntimeOptions(parallel=8, n_threads=8)
    assert (auto.contexts, auto.context_threads) == (2, 4)
    chosen = RuntimeOptions(parallel=8, n_threads=8, decode_contexts=3)
    assert (chosen.contexts, chosen.context_threads) == (3, 2)


def test_parallel_beyond_what_llama_cpp_holds_is_refused_clearly(labels: tuple[str, ...]) -> None:
    from shiftdown.errors import ConfigError

    spec = ModelSpec(str(default_gguf_path()), labels)
    with pytest.raises(ConfigError, match=r"1\.\.255"):
        Classifier(spec, RuntimeOptions(n_ctx=1024, parallel=256))


def test_manifest_coding_must_match_the_labels(labels: tuple[str, ...]) -> None:
    spec = ModelSpec(
        str(default_gguf_path()), labels, manifest=ModelManifest(labels=["x"], label_codes=[1])
    )
    with pytest.raises(ModelError, match="another label list"):
        Classifier(spec, RuntimeOptions(n_ctx=1024))


def test_codes_fall_back_to_free_vocabulary_tokens() -> None:
    vocab = ["", " card", " cardx", " other", " zeta", " alpha"]
    ids = {" card": [1], " card_a": [1], " card_b": [1], " a": [1], " b": [1]}
    codes = assign_codes(["card_a", "card_b"], lambda s: ids.get(s, [1]), vocab)
    assert codes[0] == 1 and codes[1] not in (1, -1)


def test_template_needs_a_text_slot() -> None:
    with pytest.raises(ModelError):
        PromptTemplate("no slot here")
