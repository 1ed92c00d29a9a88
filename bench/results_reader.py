"""A consumer of the Redis results stream for the chaos soak and the streaming tests: it
reads from the stream's start on a thread, as a consumer in any language would, riding
out a Redis restart, and keeps the document ids it saw (with repeats)."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis


class ResultsReader:
    """Reads ``key`` on the Redis at ``url`` until ``stop``."""

    def __init__(self, url: str, key: str = "results") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.key = key
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="results-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = "0-0"
        while not self._stop.is_set():
            try:
                reply: Any = self.client.xread({self.key: last}, count=1000, block=200)
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.2)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self.seen.append(int(fields[b"document_id"]))
                    last = entry_id.decode()

    def stop(self) -> None:
        """Stop reading (after the read in progress)."""
        self._stop.set()
        self._thread.join(10)
