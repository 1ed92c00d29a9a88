"""A producer for Python applications: hand documents over one at a time, from any
thread, and they are committed and queued in chunks on the producers' flush policy
(a full chunk, or ``SHIFTDOWN_SUBMIT_LINGER_MS`` after its oldest document).

Example (embedded defaults; with ``SHIFTDOWN_BROKER_URL`` and ``SHIFTDOWN_DATABASE_URL``
set, the same code feeds the workers)::

    from producers.application import Producer

    with Producer(task="banking77", taxonomy="demo/banking77/categories.json",
                  model="demo/banking77-lora") as producer:
        producer.submit("my card has not arrived yet", id="t-1", meta={"user": 42})
        producer.submit("how do I change my pin", id="t-2")
        producer.flush()  # both are in the store (and their tasks queued)
    print(producer.run_id)  # `shiftdown results RUN` gives their labels

The run stays open while the producer is; ``close`` (or leaving the ``with`` block)
marks it submitted.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from producers.readers import Record, Rejected, validate
from producers.submit import close_run, create_run, reopen_run, submit_records
from shiftdown.errors import ConfigError, RecordError
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy

_END = object()


class Producer:
    """Submit documents to one run of a task from an application (thread-safe).

    ``run_id`` resumes an open run instead of creating one; ``taxonomy`` (a path or a
    Taxonomy) is needed only when the task is new. ``max_pending`` documents may wait
    for the store before ``submit`` blocks.
    """

    def __init__(
        self,
        task: str | None = None,
        taxonomy: str | Taxonomy | None = None,
        model: str | None = None,
        run_id: int | None = None,
        source: str = "python",
        max_pending: int = 10_000,
    ) -> None:
        if run_id is None:
            if isinstance(taxonomy, str):
                taxonomy = Taxonomy.from_file(taxonomy)
            run_id, slm_queue = create_run(task or get_settings().task, taxonomy, model, source)
        else:
            found = reopen_run(run_id)
            if found is None:
                raise ConfigError(f"run {run_id} does not exist or is closed")
            slm_queue = found
        self.run_id = run_id
        self._pending: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._stored = threading.Condition()
        self._sent = 0  # documents handed over, numbered 1, 2, ... in order
        self._committed = 0  # the number of the last one committed
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, args=(slm_queue,), name="shiftdown-producer", daemon=True
        )
        self._thread.start()

    def _records(self) -> Iterator[Record | Rejected]:
        while (item := self._pending.get()) is not _END:
            yield item

    def _run(self, slm_queue: str) -> None:
        try:
            submit_records(
                self.run_id, self._records(), slm_queue, on_stored=self._on_stored, close=False
            )
        except BaseException as exc:  # reported to the application's next call
            with self._stored:
                self._error = exc
                self._stored.notify_all()

    def _on_stored(self, number: int) -> None:
        with self._stored:
            self._committed = number
            self._stored.notify_all()

    def _check(self) -> None:
        self._check_error()
        if self._closed:
            raise RecordError("the producer is closed")

    def submit(self, text: str, id: str | None = None, meta: dict[str, Any] | None = None) -> str:
        """Hand over one document; returns its id (a new UUID when none is given).

        A document that cannot be stored (empty text, invalid characters, an id of more
        than 255 characters) raises RecordError here; ``meta`` must be a JSON object.
        """
        self._check()
        ext = id if id is not None else uuid.uuid4().hex
        if meta is not None:
            if not isinstance(meta, dict):
                raise RecordError("meta must be a dict")
            json.dumps(meta)  # refused now, not in the store's transaction
        with self._lock:
            number = self._sent + 1
            checked = validate(number, text, ext)
            if isinstance(checked, Rejected):
                raise RecordError(checked.error.replace(f"line {number}: ", ""))
            # In order of their numbers, so that the last one committed covers the rest.
            self._pending.put(Record(number, checked.external_id, checked.text, meta))
            self._sent = number
        return ext

    def flush(self, timeout: float | None = None) -> None:
        """Block until every document handed over so far is committed (its tasks are
        sent right after); at most one linger later than it would have gone anyway."""
        target = self._sent
        with self._stored:
            done = self._stored.wait_for(
                lambda: self._committed >= target or self._error is not None, timeout
            )
        self._check_error()
        if not done:
            raise TimeoutError(f"{target - self._committed} document(s) not yet stored")

    def _check_error(self) -> None:
        if self._error is not None:
            raise RecordError(f"the producer stopped: {self._error}") from self._error

    def close(self, close_run_too: bool = True) -> None:
        """Store what is pending, stop, and (``close_run_too``) mark the run submitted."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(_END)
        self._thread.join()
        self._check_error()
        if close_run_too:
            close_run(self.run_id)

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
