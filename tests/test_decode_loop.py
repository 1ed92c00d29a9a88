"""Many threads, one model: the decode loop packs documents of concurrent callers into
shared decodes and hands each caller exactly its own results (real llama.cpp, on the
tiny random-weight model that bench/host_ceiling.py serves)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from models.batched import ThreadShare
from models.classifier import Classification, Classifier, ModelSpec, Prepared, RuntimeOptions
from models.decode_loop import DecodeLoop
from models.registry import read_manifest
from shiftdown.errors import ModelError, RetryableError


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.tiny_model import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def spec(tiny_gguf: Path, banking_taxonomy: Path) -> ModelSpec:
    labels = tuple(json.loads(banking_taxonomy.read_text()))
    return ModelSpec(str(tiny_gguf), labels, None, read_manifest(tiny_gguf))


def test_concurrent_callers_share_decodes_and_get_their_own_results(
    spec: ModelSpec, banking: list[dict[str, str]]
) -> None:
    options = RuntimeOptions(n_ctx=512, n_threads=2, parallel=16, decode_tokens=2048)
    alone = Classifier(spec, options)
    loop = DecodeLoop(Classifier(spec, options))
    assert loop.clf.contexts == 2  # two decode threads, one per context
    used: list[int] = []
    decode = loop.clf.decode

    def recording(
        group: list[Prepared], context: int = 0, alone: bool = True
    ) -> list[Classification]:
        used.append(context)
        return decode(group, context, alone)

    loop.clf.decode = recording  # type: ignore[method-assign]
    texts = [r["text"] for r in banking[:96]]
    # Eight callers of 12 documents each: 96 documents in fewer decodes than callers
    # would need one at a time (8 callers x 1 decode each), and never more than 16 each.
    chunks = [texts[i : i + 12] for i in range(0, 96, 12)]
    got: dict[int, list[str]] = {}
    logits: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(len(chunks))

    def call(k: int) -> None:
        start.wait()
        results = loop.classify_many(chunks[k])
        got[k] = [r.label for r in results]
        logits[k] = [r.logits for r in results]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    loop.close()
    expected = alone.classify_many(texts)
    for k, chunk in enumerate(chunks):
        assert len(got[k]) == len(chunk)
        for i, row in enumerate(logits[k]):
            # The same document wherever it sat in a shared decode.
            np.testing.assert_allclose(row, expected[12 * k + i].logits, atol=1e-3)
    assert loop.decodes >= 96 // 16  # at most 16 documents per decode
    assert set(used) == {0, 1}  # both contexts decoded callers' documents


def test_a_failed_decode_fails_only_its_callers(spec: ModelSpec) -> None:
    loop = DecodeLoop(Classifier(spec, RuntimeOptions(n_ctx=512, n_threads=2, parallel=4)))
    good = loop.classify_many(["where is my card"])
    assert len(good) == 1

    def broken(group: object, context: int = 0, alone: bool = True) -> object:
        raise ModelError("llama_decode failed with code -1")

    original = loop.clf.decode
    loop.clf.decode = broken  # type: ignore[method-assign]
    with pytest.raises(ModelError, match="llama_decode"):
        loop.classify_many(["a", "b"])
    loop.clf.decode = original  # type: ignore[method-assign]
    assert len(loop.classify_many(["and again"])) == 1
    loop.close()


def test_one_bad_document_fails_only_itself_not_what_it_shared_a_decode_with(
    spec: ModelSpec, banking: list[dict[str, str]]
) -> None:
    loop = DecodeLoop(Classifier(spec, RuntimeOptions(n_ctx=512, n_threads=2, parallel=16)))
    poison = loop.clf.prepare("poison").tokens
    decode = loop.clf.decode

    def failing(
        group: list[Prepared], context: int = 0, alone: bool = True
    ) -> list[Classification]:
        if any(np.array_equal(p.tokens, poison) for p in group):
            raise ModelError("llama_decode failed with code -1")
        return decode(group, context, alone)

    loop.clf.decode = failing  # type: ignore[method-assign]
    texts = [r["text"] for r in banking[:6]]
    outcome: dict[str, object] = {}
    start = threading.Barrier(2)

    def call(name: str, batch: list[str]) -> None:
        start.wait()
        try:
            outcome[name] = loop.classify_many(batch)
        except ModelError as exc:
            outcome[name] = exc

    a = threading.Thread(target=call, args=("a", ["poison", *texts[:3]]))
    b = threading.Thread(target=call, args=("b", texts[3:]))
    for t in (a, b):
        t.start()
    for t in (a, b):
        t.join(timeout=60)
    loop.close()
    assert isinstance(outcome["a"], ModelError)  # its own bad document
    assert isinstance(outcome["b"], list) and len(outcome["b"]) == 3  # untouched by it


# The decode thread's own death is the point here, not a stray error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_callers_never_wait_on_a_decode_thread_that_died(spec: ModelSpec) -> None:
    loop = DecodeLoop(Classifier(spec, RuntimeOptions(n_ctx=512, n_threads=2, parallel=4)))

    def dying(group: object, context: int = 0, alone: bool = True) -> object:
        raise SystemExit("the decode thread is going away")

    loop.clf.decode = dying  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        loop.classify_many(["a", "b"])
    with pytest.raises(RetryableError):  # closed: refused, not left waiting
        loop.classify_many(["c"])
    for thread in loop._threads:  # their end reported within this test
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_decode_alone_takes_every_thread_and_the_next_waits_for_it() -> None:
    share = ThreadShare(total=4, share=2)
    assert share.take(alone=False) == 2  # may run beside another: its share
    assert share.take(alone=True) == 2  # one is in flight: its share, at once
    share.give_back()
    share.give_back()
    assert share.take(alone=True) == 4  # none in flight: every thread
    started = threading.Event()
    got: list[int] = []

    def second() -> None:
        got.append(share.take(alone=False))
        started.set()

    waiting = threading.Thread(target=second)
    waiting.start()
    # Never more threads than there are: the second waits for the first to finish.
    assert not started.wait(0.3)
    share.give_back()
    assert started.wait(10)
    waiting.join()
    assert got == [2]
