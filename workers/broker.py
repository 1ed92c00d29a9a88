"""What the broker holds: the document ids of every task waiting in a queue or
delivered to a worker and not yet acknowledged (Redis transport)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

from workers.app import TASK_FRONTIER, TASK_SLM, app

# kombu's Redis transport keeps delivered, unacknowledged messages in this hash until
# they are acknowledged or their visibility timeout restores them to their queue.
UNACKED_KEY = "unacked"


def _document_ids(message: dict[str, Any], tasks: tuple[str, ...]) -> Iterator[int]:
    headers = message.get("headers") or {}
    if headers.get("task") not in tasks:
        return
    body = message.get("body", "")
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    first = args[0] if args else []
    yield from (first if isinstance(first, list) else [first])


def _messages(raw: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    for item in raw:
        try:
            yield json.loads(item)
        except (TypeError, ValueError):
            continue


def in_flight(
    queues: Iterable[str], tasks: tuple[str, ...] = (TASK_SLM, TASK_FRONTIER)
) -> set[int]:
    """Document ids carried by a task named in ``tasks`` waiting in ``queues`` (priority
    sub-queues included) or delivered and unacknowledged. A document owed a frontier
    call is not carried by an SLM task that still names it (that task will do nothing
    for it), so reconciliation asks per task."""
    ids: set[int] = set()
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for queue in set(queues):
            for key in client.scan_iter(match=f"{queue}*"):
                if client.type(key) in (b"list", "list"):
                    for message in _messages(client.lrange(key, 0, -1)):
                        ids.update(_document_ids(message, tasks))
        for entry in _messages(client.hvals(UNACKED_KEY)):
            if isinstance(entry, list) and entry and isinstance(entry[0], dict):
                ids.update(_document_ids(entry[0], tasks))
    return ids
