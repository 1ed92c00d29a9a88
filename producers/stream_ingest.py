"""``shiftdown ingest --stream KEY``: documents from a Redis Stream, for producers in any
language, read through a consumer group.

An entry is acknowledged only once its document is committed, so a consumer killed at
any moment loses nothing: its entries stay pending, and the next consumer of the group
claims them again (its own pending entries on a restart under the same name, another's
with ``XAUTOCLAIM`` once they have been idle ``claim_idle_ms``). A document the store
already has (an entry delivered again after its commit, before its ack) is skipped by
its id, which is the entry's own id unless the entry names one. An entry that cannot be
a document is recorded in ``input_errors`` and acknowledged, never retried forever.

Entry fields: the text (``text``, or ``--text-field``), an optional id (``id``, or
``--id-field``), and an optional ``meta`` holding a JSON object.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import redis

from producers.readers import Record, Rejected, validate

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_COUNT = 500
BLOCK_MS = 100
CLAIM_EVERY_S = 30.0


@dataclass
class StreamSource:
    """Where and how to read: the stream, its group and this consumer's name."""

    url: str
    key: str
    group: str = "shiftdown"
    consumer: str = "ingest"
    text_field: str = "text"
    id_field: str = "id"
    claim_idle_ms: int = 60_000


@dataclass
class StreamReader:
    """The stream's entries as records, until ``stop``; ``committed`` acknowledges the
    entries of every record up to a number."""

    source: StreamSource
    client: redis.Redis = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _unacked: deque[tuple[int, bytes]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _to_ack: list[bytes] = field(default_factory=list)
    _number: int = 0
    acked: int = 0

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.source.url)
        try:
            self.client.xgroup_create(self.source.key, self.source.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        """End the iteration after the read in progress (SIGINT, SIGTERM)."""
        self._stop.set()

    def committed(self, number: int) -> None:
        """Acknowledge the entries of every record numbered up to ``number``. With Redis
        away they are acknowledged with the next chunk's (a restart or a claim meanwhile
        delivers them again, and their ids are skipped)."""
        with self._lock:
            while self._unacked and self._unacked[0][0] <= number:
                self._to_ack.append(self._unacked.popleft()[1])
            ids = list(self._to_ack)
        if not ids:
            return
        try:
            self.client.xack(self.source.key, self.source.group, *ids)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("acknowledging %d entries failed (%s); trying with the next", len(ids), exc)
            return
        with self._lock:
            del self._to_ack[: len(ids)]
        self.acked += len(ids)

    def _record(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Record | Rejected:
        self._number += 1
        number = self._number
        with self._lock:
            self._unacked.append((number, entry_id))
        src = self.source
        values = {k.decode("utf-8", "replace"): v for k, v in fields.items()}
        text = _decoded(values.get(src.text_field))
        ext = _decoded(values.get(src.id_field)) or entry_id.decode()
        meta: Any = None
        if "meta" in values:
            try:
                meta = json.loads(values["meta"])
            except ValueError:
                meta = "invalid"
            if not isinstance(meta, dict):
                return Rejected(number, f"entry {entry_id.decode()}: meta is not a JSON object", "")
        checked = validate(number, text, ext)
        if isinstance(checked, Rejected):
            error = checked.error.replace(f"line {number}", f"entry {entry_id.decode()}")
            return Rejected(number, error, checked.excerpt)
        return Record(number, checked.external_id, checked.text, meta)

    def _waiting_out(self, call: Callable[[], T]) -> T | None:
        """``call()``, waiting out a Redis outage (a restart) until it answers again or
        the reader is stopped (None)."""
        delay = 0.25
        while not self._stop.is_set():
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("reading %s failed (%s); trying again", self.source.key, exc)
            self._stop.wait(delay)
            delay = min(2 * delay, 2.0)
        return None

    def _read(self, start: str, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        src = self.source

        def read() -> Any:
            return self.client.xreadgroup(
                src.group, src.consumer, {src.key: start}, count=READ_COUNT, block=block
            )

        reply = self._waiting_out(read)
        return list(reply[0][1]) if reply else []

    def _claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries another consumer read and never acknowledged (it died), idle long
        enough to be its no longer."""
        src = self.source
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: Any = "0-0"
        while True:
            claim = partial(
                self.client.xautoclaim,
                src.key,
                src.group,
                src.consumer,
                src.claim_idle_ms,
                cursor,
                count=READ_COUNT,
            )
            reply: Any = self._waiting_out(claim)
            if reply is None:
                return claimed
            cursor, entries = reply[0], reply[1]
            # Entries deleted from the stream since come back as None: nothing to store.
            claimed.extend(e for e in entries if e is not None and e[1] is not None)
            if cursor in (b"0-0", "0-0") or not entries:
                return claimed

    def __iter__(self) -> Iterator[Record | Rejected]:
        # This consumer's own entries left pending by an earlier life, first.
        after = "0"
        while not self._stop.is_set() and (entries := self._read(after, None)):
            for entry_id, fields in entries:
                yield self._record(entry_id, fields)
            after = entries[-1][0].decode()
        claimed_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() - claimed_at > CLAIM_EVERY_S:
                claimed_at = time.monotonic()
                for entry_id, fields in self._claim():
                    yield self._record(entry_id, fields)
            for entry_id, fields in self._read(">", BLOCK_MS):
                yield self._record(entry_id, fields)


def _decoded(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")
