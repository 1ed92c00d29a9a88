"""Real llama.cpp inference on the bundled SmolLM2 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.base import default_gguf_path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.coding import PromptTemplate, assign_codes
from shiftdown.errors import ModelError


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


def test_manifest_coding_must_match_the_labels(labels: tuple[str, ...]) -> None:
    spec = ModelSpec(
        str(default_gguf_path()), labels, manifest={"labels": ["x"], "label_codes": [1]}
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
