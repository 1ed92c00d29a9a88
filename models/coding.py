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


def assign_codes(
    labels: Sequence[str], tokenize: Tokenize, vocab: Sequence[str]
) -> list[int]:
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
