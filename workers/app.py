"""The Celery application (``celery -A workers.app worker -Q slm``) and dispatch helpers.

Delivery is at least once: tasks are acknowledged late, rejected (so redelivered) when
their worker dies, carry only ids, and are no-ops when their result is already stored.
The store, not a result backend, is the source of truth, so results are ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shiftdown.settings import Settings, get_settings
from workers import kombu_fix

kombu_fix.apply()

TASK_SLM = "shiftdown.slm.classify_batch"
TASK_FRONTIER = "shiftdown.frontier.classify"

log = logging.getLogger(__name__)
T = TypeVar("T")

app = Celery("shiftdown", include=["workers.slm", "workers.frontier", "workers.sweeping"])


def configure(settings: Settings | None = None) -> None:
    """(Re)apply settings to the app; embedded mode (no broker) runs tasks in-process."""
    s = settings or get_settings()
    if app.conf.broker_url != (s.broker_url or "memory://"):
        # The app's pools still point at the old broker; kombu keeps one pool per broker
        # URL, so dropping the references is enough (and leaves the others usable).
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=s.broker_url or "memory://",
        result_backend=None,
        task_ignore_result=True,
        task_always_eager=s.embedded,
        task_eager_propagates=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message in hand per process: a batch is seconds of work, and a deeper
        # prefetch would strand messages behind a busy process.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=s.worker_max_tasks_per_child,
        # A pool process loads its model in worker_process_init, before it reports up;
        # past this Celery kills it and forks another, which loads again, forever.
        worker_proc_alive_timeout=s.worker_start_timeout_s,
        task_default_queue=s.slm_queue,
        task_routes={
            TASK_SLM: {"queue": s.slm_queue},
            TASK_FRONTIER: {"queue": s.frontier_queue},
        },
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": s.visibility_timeout_s,
            # kombu sweeps every interval but scans Redis only every 10th sweep by
            # default, so a lost task waited up to 100 s past its timeout; one scan per
            # sweep costs a single ZRANGEBYSCORE.
            "unacked_restore_interval": s.restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        # Flower shows tasks only when workers and producers send events.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )


def run_in_process() -> None:
    """Make every dispatch in this process execute the task inline (``shiftdown run``)."""
    app.conf.task_always_eager = True


def dispatch(
    name: str,
    args: list[Any],
    queue: str | None = None,
    producer: Any = None,
    declare: bool = True,
) -> None:
    """Send task ``name`` to its queue, or run it inline in embedded mode.

    ``declare=False`` skips declaring the queue, for a producer that has just declared
    it: Celery declares on every message, a tenth of a bulk producer's time.

    A broker that is away is waited for, up to ``SHIFTDOWN_PUBLISH_RETRY_S``: what is
    sent here was usually committed just before (a producer's documents, an SLM task's
    escalations), and a message that never leaves is a hand-off lost until a
    reconciliation sweep finds it.
    """
    if app.conf.task_always_eager:
        app.loader.import_default_modules()
        app.tasks[name].apply(args=args)
        return
    try:
        _send(name, args, queue, producer, declare)
        return
    except Exception as exc:
        if not _broker_trouble(exc):
            raise
        log.warning("publishing %s failed (%r); trying again on a fresh connection", name, exc)
    _on_fresh_connections(lambda conn: _send(name, args, queue, None, declare, connection=conn))


def _on_fresh_connections(call: Callable[[Any], T]) -> T:
    """``call(connection)`` on a new broker connection each try, while the broker is
    away, for up to ``SHIFTDOWN_PUBLISH_RETRY_S``.

    Celery's own retries reuse the producer's channel, and after a dropped connection
    kombu's Redis channel is left without one: each retry then fails at once with an
    AttributeError, well inside Celery's default policy of 3 retries in 0.6 s. So each
    attempt here makes a connection of its own.
    """
    deadline = time.monotonic() + get_settings().publish_retry_s
    delay = 0.25
    while True:
        time.sleep(delay)
        try:
            with app.connection_for_write() as conn:
                return call(conn)
        except Exception as exc:
            if not _broker_trouble(exc) or time.monotonic() + delay > deadline:
                raise
        delay = min(2 * delay, 2.0)


def _send(
    name: str, args: list[Any], queue: str | None, producer: Any, declare: bool, **extra: Any
) -> None:
    # Arguments are only ids: their plain repr is what Flower shows, without the cost of
    # Celery's guarded saferepr (a tenth of the producer's time).
    app.send_task(
        name,
        args=args,
        queue=queue,
        producer=producer,
        argsrepr=repr(args),
        kwargsrepr="{}",
        # None: Celery's default, the message's own queue; []: nothing.
        declare=None if declare else [],
        **extra,
    )


def _broker_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker could not be reached (kombu's stale-channel
    AttributeError included: see ``dispatch``)."""
    if isinstance(exc, BrokerError | RedisConnectionError | RedisTimeoutError | OSError):
        return True
    return isinstance(exc, AttributeError) and "client" in str(exc)


def queue_depth(queue: str) -> int:
    """Messages waiting in ``queue`` (0 in embedded mode)."""
    if app.conf.task_always_eager:
        return 0
    # From the app's pool: a fresh connection per call cost more than the message.
    try:
        with app.pool.acquire(block=True) as conn:
            return _depth(conn, queue)
    except Exception as exc:
        if not _broker_trouble(exc):
            raise
        # A producer asks between publishes: the broker is waited for as a publish is.
        log.warning("asking the depth of %s failed (%r); trying again", queue, exc)
    return _on_fresh_connections(lambda conn: _depth(conn, queue))


def _depth(conn: Any, queue: str) -> int:
    try:
        declared = conn.default_channel.queue_declare(queue=queue, passive=True)
    except ChannelError:  # Redis has no key for an empty queue
        return 0
    return int(declared.message_count)


configure()
