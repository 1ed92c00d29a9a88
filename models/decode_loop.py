"""One model served to many threads: continuous batching across callers.

A worker that decodes one task at a time leaves the model idle while it reads the task's
documents from the store and writes their results, and a task smaller than a decode
leaves the decode part empty. Here every caller (a Celery worker thread, one per task
in flight) tokenizes its own documents on its own thread, llama.cpp's tokenizer running
without the GIL, and queues them; one decode thread per batched llama.cpp context
(``Classifier.contexts``) packs each decode from whatever is queued when it becomes
free, across callers, up to ``parallel`` documents and the token budget. With two
contexts one decode's host work runs while the other computes. A caller waits only for
its own documents, then stores them while the next decode runs.

With nothing else queued a caller's documents go straight through, so a single-threaded
worker (Celery's prefork pool, one task per process) behaves as before, at the cost of
one hand-off between threads per decode.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.batched import Pack
from models.classifier import Classification, Classifier, Prepared
from shiftdown.errors import ModelError, RetryableError


@dataclass(eq=False)
class _Request:
    items: list[Prepared]
    results: list[Classification | None]
    taken: int = 0  # items handed to a decode so far
    left: int = 0  # items without a result yet
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class DecodeLoop:
    """Serves ``clf`` to any number of threads; see the module's docstring."""

    def __init__(self, clf: Classifier) -> None:
        self.clf = clf
        self._queue: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._finish = threading.Lock()  # results, counts and errors of requests
        self.decodes = 0  # decodes run, for tests and metrics
        self._threads = [
            threading.Thread(
                target=self._run, args=(context,), name=f"shiftdown-decode-{context}", daemon=True
            )
            for context in range(max(1, clf.contexts))
        ]
        for thread in self._threads:
            thread.start()

    def classify_many(self, texts: Sequence[str]) -> list[Classification]:
        """Each text's distribution, in order (decoded together with other callers')."""
        if not texts:
            return []
        items = [self.clf.prepare(t) for t in texts]
        request = _Request(items, [None] * len(items), left=len(items))
        with self._wake:
            if self._closed:
                # Evicted between lookup and use (more models in use than may stay
                # resident): the task tries again and loads it afresh.
                raise RetryableError("the model was unloaded while this batch waited for it")
            self._queue.append(request)
            self._wake.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return [r for r in request.results if r is not None]

    def classify(self, text: str) -> Classification:
        """One text's distribution."""
        return self.classify_many([text])[0]

    def close(self) -> None:
        """Finish what is queued, then stop the decode threads."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join()

    def _take(self) -> list[tuple[_Request, int]]:
        """The next decode's items, oldest first, as (request, index); under the lock."""
        picked: list[tuple[_Request, int]] = []
        pack = Pack()
        for request in self._queue:
            while request.taken < len(request.items):
                item = request.items[request.taken]
                if not self.clf.fits(pack, item):
                    return picked
                picked.append((request, request.taken))
                pack.add(len(item.tokens))
                request.taken += 1
        return picked

    def _run(self, context: int) -> None:
        picked: list[tuple[_Request, int]] = []
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._closed:
                        self._wake.wait()
                    if not self._queue:
                        return
                    picked = self._take()
                    while self._queue and self._queue[0].taken == len(self._queue[0].items):
                        self._queue.popleft()
                    # More than this decode takes: another context may start on it, and
                    # the two share the threads; else this one may take them all.
                    alone = not self._queue
                    if not alone:
                        self._wake.notify()
                self._decode(picked, context, alone)
                picked = []
        except BaseException as exc:
            # Nothing may wait for a thread that is gone: fail what is queued, refuse more.
            with self._wake:
                self._closed = True
                stranded = [request for request, _ in picked] + list(self._queue)
                self._queue.clear()
                # The other decode threads finish what they hold, then see the close.
                self._wake.notify_all()
            for request in stranded:
                self._fail(request, exc)
            raise

    def _decode(self, picked: list[tuple[_Request, int]], context: int, alone: bool) -> None:
        items = [request.items[i] for request, i in picked]
        try:
            results = self.clf.decode(items, context, alone)
        except Exception as exc:
            if len(picked) == 1:
                self._fail(picked[0][0], exc)
                return
            # One bad document must not fail the others it shared the decode with (other
            # callers' among them): each goes again alone, and only what fails alone fails.
            for request, index in picked:
                try:
                    one = self.clf.decode([request.items[index]], context, alone)[0]
                except Exception as failed:
                    self._fail(request, failed)
                else:
                    self._done([(request, index)], [one])
            return
        finally:
            with self._finish:
                self.decodes += 1
        if len(results) != len(picked):
            error = ModelError(f"a decode of {len(picked)} returned {len(results)} results")
            for request, _ in picked:
                self._fail(request, error)
            return
        self._done(picked, results)

    def _done(self, picked: list[tuple[_Request, int]], results: list[Classification]) -> None:
        # Decode threads may finish documents of the same request at once.
        with self._finish:
            for (request, index), result in zip(picked, results, strict=True):
                if request.error is not None:
                    continue
                request.results[index] = result
                request.left -= 1
                if request.left == 0:
                    request.done.set()

    def _fail(self, request: _Request, exc: BaseException) -> None:
        with self._finish:
            if request.error is not None:
                return
            request.error = exc
        with self._wake:
            # Its documents not yet decoded are dropped with it.
            if request in self._queue:
                self._queue.remove(request)
        request.done.set()
