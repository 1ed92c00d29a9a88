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

import ctypes
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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
            # SentencePiece (Llama 2, Mistral, Phi-3) encodes " card" as a bare "▁" and
            # then "▁card": the word's own token is the first one that is not blank.
            while ids and not vocab[ids[0]].strip():
                ids = ids[1:]
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
        self._vocab_ptr = llm._model.vocab
        self._local = threading.local()

    def encode_fixed(self, text: str, first: bool) -> list[int]:
        """Template text: special tokens allowed, BOS only at the very start."""
        return list(self.llm.tokenize(text.encode(), add_bos=first, special=True))

    def encode_document(self, text: str) -> list[int]:
        """Document text: never parsed for special tokens, so it cannot inject any."""
        tokens: list[int] = self.document_array(text)[0].tolist()
        return tokens

    def document_array(
        self, text: str, limit: int | None = None, tail: npt.NDArray[np.int32] | None = None
    ) -> tuple[npt.NDArray[np.int32], int, bool]:
        """``encode_document`` as an int32 array through llama.cpp's tokenizer directly:
        at most ``limit`` document tokens, followed by ``tail`` (the answer cue). Returns
        the array, the document's token count and whether ``limit`` cut it.

        ``Llama.tokenize`` allocates and zeroes a buffer of the model's whole training
        context (8,192 tokens for SmolLM2) on every call and copies the answer into a
        list; numpy's ctypes pointers cost as much again. Each thread here keeps one
        ctypes buffer, grown as needed (a text never has more tokens than bytes), so a
        call is llama.cpp's tokenizer and a copy, and it runs without the GIL: worker
        threads tokenize in parallel.
        """
        import llama_cpp

        data = text.encode("utf-8", "replace")
        buf = self._buffer(len(data) + 1)
        n = llama_cpp.llama_tokenize(self._vocab_ptr, data, len(data), buf, len(buf), False, False)
        if n < 0:  # cannot happen without BOS, but llama.cpp says how many it needs
            buf = self._buffer(-n)
            n = llama_cpp.llama_tokenize(
                self._vocab_ptr, data, len(data), buf, len(buf), False, False
            )
        cut = limit is not None and n > limit
        if cut:
            n = limit
        extra = 0 if tail is None else len(tail)
        out = np.empty(n + extra, dtype=np.int32)
        out[:n] = np.frombuffer(buf, dtype=np.int32, count=n)
        if tail is not None:
            out[n:] = tail
        return out, n, cut

    def _buffer(self, size: int) -> Any:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = (ctypes.c_int32 * max(size, 4096))()
            self._local.buf = buf
        return buf

    def codes(self, labels: Sequence[str]) -> list[int]:
        """The label coding of ``assign_codes`` for this vocabulary."""
        n = self.llm.n_vocab()
        vocab = [self.llm.detokenize([i]).decode("utf-8", "replace") for i in range(n)]
        return assign_codes(
            labels, lambda s: list(self.llm.tokenize(s.encode(), add_bos=False)), vocab
        )
