"""A worker survives the broker dropping its connection while it holds delivered
messages (workers/kombu_fix.py), and those messages are not lost: the visibility-timeout
restore puts them back on their queue."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from kombu.transport import redis as kombu_redis

from workers import kombu_fix
from workers.app import app

QUEUE = "kombu-fix-test"


def _deliver_one(conn: Any) -> Any:
    """A channel holding one delivered, unacknowledged message (as a worker does)."""
    channel = conn.channel()
    channel.queue_declare(QUEUE)
    channel.basic_publish(channel.prepare_message("hello"), exchange="", routing_key=QUEUE)
    assert channel.basic_get(QUEUE, no_ack=False) is not None
    return channel


def test_a_channel_whose_connection_is_gone_closes_and_leaves_its_messages(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    # Unguarded, closing it fails the way the soak's frontier worker died.
    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked", kombu_fix._original_restore_unacked)
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", kombu_fix._original_connparams)
    with app.connection_for_write(redis_url) as conn:
        channel = _deliver_one(conn)
        conn.transport.client = None  # what kombu leaves once the connection is dropped
        with pytest.raises(AttributeError, match="hostname"):
            channel.close()
    client.flushdb()

    kombu_fix.apply()
    with app.connection_for_write(redis_url) as conn:
        channel = _deliver_one(conn)
        conn.transport.client = None
        channel.close()
    assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0

    # Past its visibility timeout any consumer's restore puts it back on its queue.
    with app.connection_for_write(redis_url) as conn:
        conn.transport_options["visibility_timeout"] = 0
        conn.default_channel.qos.restore_visible(num=10, interval=1)
    assert client.hlen("unacked") == 0 and client.llen(QUEUE) == 1


def test_a_reject_on_a_channel_whose_connection_is_gone_is_a_connection_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    # Unguarded, an AttributeError, which Celery treats as unrecoverable (the soak's
    # frontier worker died rejecting a message after Redis came back).
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", kombu_fix._original_connparams)
    with app.connection_for_write(redis_url) as conn:
        channel = _deliver_one(conn)
        tag = next(iter(channel.qos._delivered))
        # What a dropped connection leaves: no pooled client, no transport.
        channel._disconnect_pools()
        channel.connection = None
        with pytest.raises(AttributeError):
            channel.basic_reject(tag, requeue=True)
    client.flushdb()

    kombu_fix.apply()
    with app.connection_for_write(redis_url) as conn:
        channel = _deliver_one(conn)
        tag = next(iter(channel.qos._delivered))
        channel._disconnect_pools()
        channel.connection = None
        # ...guarded, one of the errors Celery answers by reconnecting.
        with pytest.raises(conn.connection_errors):
            channel.basic_reject(tag, requeue=True)
    # The message waits, unacknowledged, for the visibility restore.
    assert client.hlen("unacked") == 1
