"""The producers' flush policy, in the manner of Kafka's producer (``batch.size`` and
``linger.ms``): a chunk goes when it is full, or when its oldest item has waited
``linger_s``, whichever comes first.

The input is read on a thread of its own, so that a slow pipe blocked in ``read`` never
holds back a chunk whose time has come. Items cross to the caller through a deque
(appends and pops are atomic in CPython) and an event set only when the buffer turns
non-empty or fills, so a fast file pays a few hundred nanoseconds an item, not a lock
and a wake-up each.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Reader(Generic[T]):
    """Drains ``items`` into ``buffer`` on a daemon thread, at most ``cap`` ahead."""

    def __init__(self, items: Iterable[T], size: int, cap: int) -> None:
        self.buffer: deque[T] = deque()
        self.ready = threading.Event()  # the buffer turned non-empty, filled, or ended
        self.room = threading.Event()  # the caller took a chunk
        self.done = False
        self.error: BaseException | None = None
        self.stopped = False
        self._items = items
        self._size = size
        self._cap = cap
        self._thread = threading.Thread(target=self._run, name="shiftdown-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer, size, cap = self.buffer, self._size, self._cap
        try:
            for item in self._items:
                buffer.append(item)
                n = len(buffer)
                if n == 1 or n == size:
                    self.ready.set()
                while n >= cap and not self.stopped:
                    # Backpressure: the caller is storing or publishing; wait for room.
                    self.room.clear()
                    if len(buffer) >= cap:
                        self.room.wait(0.1)
                    n = len(buffer)
                if self.stopped:
                    return
        except BaseException as exc:  # handed to the caller, after what was read
            self.error = exc
        finally:
            self.done = True
            self.ready.set()


class LingeringChunks(Generic[T]):
    """``items`` in chunks of at most ``size``: each chunk is yielded as soon as it is
    full, or once its first item has waited ``linger_s`` seconds, or when the input ends.

    An exception raised while reading ``items`` is raised by the iteration after the
    items read before it have been yielded.
    """

    def __init__(self, items: Iterable[T], size: int, linger_s: float) -> None:
        self._items = items
        self._size = size
        self._linger_s = linger_s
        self._reader: _Reader[T] | None = None

    def next_ready(self) -> bool:
        """Whether the next chunk can be had without waiting: a full one is buffered, or
        the input has ended. A caller holding work back for the next chunk (a store
        running ahead) finishes it now instead when this is False."""
        reader = self._reader
        return reader is None or reader.done or len(reader.buffer) >= self._size

    def __iter__(self) -> Iterator[list[T]]:
        items, size = self._items, self._size
        if isinstance(items, list | tuple):  # nothing to wait for
            for i in range(0, len(items), size):
                yield list(items[i : i + size])
            return
        reader = self._reader = _Reader(items, size, cap=4 * size)
        buffer = reader.buffer
        first_seen: float | None = None  # when the oldest buffered item was first seen
        try:
            while True:
                reader.ready.clear()
                n = len(buffer)
                done = reader.done
                if n == 0:
                    if done:
                        break
                    reader.ready.wait()
                    continue
                now = time.monotonic()
                if first_seen is None:
                    first_seen = now
                wait = first_seen + self._linger_s - now
                if n < size and not done and wait > 0:
                    reader.ready.wait(wait)
                    continue
                chunk = [buffer.popleft() for _ in range(min(n, size))]
                first_seen = time.monotonic() if buffer else None
                reader.room.set()
                yield chunk
            if reader.error is not None:
                raise reader.error
        finally:
            reader.stopped = True
            reader.room.set()


def lingering_chunks(items: Iterable[T], size: int, linger_s: float) -> LingeringChunks[T]:
    """``items`` chunked on the flush policy (see ``LingeringChunks``)."""
    return LingeringChunks(items, size, linger_s)
