"""Guards around kombu's Redis transport (kombu 5.x) that keep a worker alive when the
broker drops its connection while the worker holds delivered messages.

On a lost connection Celery's consumer closes the old connection, ignoring connection
errors. Closing its channel restores the unacknowledged messages it holds, through a new
Redis client built from the transport's connection info; but the transport has often
been detached from its connection by then (``client`` is None), so building the client
raises ``AttributeError`` instead of a connection error. Celery treats that as
unrecoverable and the worker exits: a broker blip then costs a worker, found in the chaos
soak (``bench/soak.py``) when Redis was restarted under a frontier worker with four
tasks in hand.

With no connection to restore through, the restore is skipped: the messages are still
in Redis's unacknowledged hash, and the visibility-timeout restore (any consumer's, every
``SHIFTDOWN_RESTORE_INTERVAL_S``) puts them back on their queues, as it does for a worker
that died.

Any other use of such a channel (the soak saw a reject of a task's message, queued
before the drop, run after the reconnect) builds its client the same way; it now raises
redis's ``ConnectionError``, one of the transport's connection errors, which Celery
answers by reconnecting instead of shutting down. The message it concerned stays
unacknowledged until the visibility-timeout restore, and tasks are idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

_original_restore_unacked: Any = kombu_redis.QoS.restore_unacked
_original_connparams: Any = kombu_redis.Channel._connparams


def _restore_unacked(self: Any, client: Any = None) -> Any:
    if client is None and getattr(self.channel.connection, "client", None) is None:
        log.warning(
            "broker connection gone: %d delivered messages left to the visibility-timeout restore",
            len(self._delivered),
        )
        self._delivered.clear()
        return None
    return _original_restore_unacked(self, client)


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or self.connection.client is None:
        raise RedisConnectionError("this channel's broker connection is gone")
    return _original_connparams(self, asynchronous=asynchronous)


def apply() -> None:
    """Install the guards (idempotent)."""
    setattr(kombu_redis.QoS, "restore_unacked", _restore_unacked)  # noqa: B010
    setattr(kombu_redis.Channel, "_connparams", _connparams)  # noqa: B010
