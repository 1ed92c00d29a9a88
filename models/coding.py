"""Prompt template and label coding: how a document becomes tokens, and how one forward
pass becomes a probability for every label.

Each label is coded as one distinct vocabulary token, the answer's first token. The
model's next-token logits at the end of the prompt, restricted to those tokens and
softmaxed, are the label distribution: one forward pass per document, no generation and
no parsing. Codes are taken from the label's own words where they are free (``card_arrival``
→ `` card``, ``card_linking`` → `` linking``), so a fine-tune starts from tokens whose
meaning is close, and the coding is stored in the model's manifest so the trainer and the
worker use the same one by construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shiftdown.errors import ModelError

TEXT_SLOT = "{text}"
LABELS_SLOT = "{labels}"

# Used when a model has no chat template of its own.
PLAIN_TEMPLATE = (
    "Classify the message into exactly one of these categories: {labels}.\n"
    "Message: {text}\nCategory:"
)
SYSTEM_PROMPT = "Classify the message into exactly one of these categories: {labels}."
ANSWER_PREFIX = "Category:"

Tokenize = Callable[[str], list[int]]
Detokenize = Callable[[int], str]


@dataclass(frozen=True)
class PromptTemplate:
    """A template with ``{labels}`` (filled once) and ``{text}`` (filled per document).

    Only the text varies between documents, so everything before ``{text}`` is a fixed
    prefix that the classifier evaluates once and keeps in the KV cache.
    """

    template: str

    def __post_init__(self) -> None:
        if self.template.count(TEXT_SLOT) != 1:
            raise ModelError("a prompt template needs exactly one {text} slot")

    def split(self, labels: Sequence[str]) -> tuple[str, str]:
        """The fixed text before and after the document for these labels."""
        filled = self.template.replace(LABELS_SLOT, ", ".join(labels))
        prefix, suffix = filled.split(TEXT_SLOT)
        return prefix, suffix


def _words(label: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-/]+", label) if w]


def assign_codes(labels: Sequence[str], tokenize: Tokenize, vocab: Sequence[str]) -> list[int]:
    """One distinct token id per label, preferring the label's own words.

    ``tokenize`` encodes text without BOS; ``vocab`` is the decoded text of every token
    id, used only when none of a label's words is free.
    """
    taken: set[int] = set()
    codes: list[int] = []
    pending: list[int] = []
    for index, label in enumerate(labels):
        candidates = [" " + label, *(" " + w for w in _words(label))]
        chosen = None
        for candidate in candidates:
            ids = tokenize(candidate)
            if ids and ids[0] not in taken:
                chosen = ids[0]
                break
        codes.append(chosen if chosen is not None else -1)
        if chosen is None:
            pending.append(index)
        else:
            taken.add(chosen)
    if pending:
        pool = (
            tid
            for tid, text in enumerate(vocab)
            if len(text) > 2 and text.startswith(" ") and text[1:].isalpha() and tid not in taken
        )
        for index in pending:
            try:
                codes[index] = next(pool)
            except StopIteration:
                raise ModelError("vocabulary too small to code every label") from None
            taken.add(codes[index])
    return codes


# Template of fine-tuned models: no label list (the model has learned the codes), so
# the fixed prefix is a few tokens and each document costs its own tokens plus 8.
FINETUNE_TEMPLATE = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\nIntent:"


class Vocab:
    """Tokenization shared by training and serving, through llama.cpp's own tokenizer.

    Fine-tuning and the SLM worker both encode prompts here, so a model is trained on
    exactly the token ids it is later served with.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def encode_fixed(self, text: str, first: bool) -> list[int]:
        """Template text: special tokens allowed, BOS only at the very start."""
        return list(self.llm.tokenize(text.encode(), add_bos=first, special=True))

    def encode_document(self, text: str) -> list[int]:
        """Document text: never parsed for special tokens, so it cannot inject any."""
        return list(
            self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
        )

    def codes(self, labels: Sequence[str]) -> list[int]:
        """The label coding of ``assign_codes`` for this vocabulary."""
        n = self.llm.n_vocab()
        vocab = [self.llm.detokenize([i]).decode("utf-8", "replace") for i in range(n)]
        return assign_codes(
            labels, lambda s: list(self.llm.tokenize(s.encode(), add_bos=False)), vocab
        )
