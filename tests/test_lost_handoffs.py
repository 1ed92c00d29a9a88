"""A hand-off lost between a commit and its publish heals itself (real Postgres, real
Redis behind a proxy the test cuts, the bundled model, in this process).

The failure seen in the broker-restart test: an SLM task committed its escalations,
then published their frontier tasks while Redis was down; Celery's own publish policy
gave up in well under a second, the task failed and was acknowledged, and the documents
stayed ``escalated`` with no task anywhere. Here the outage is injected exactly between
the commit and the publish."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner
from kombu.exceptions import OperationalError
from sqlalchemy import func, select

from bench.scripted_server import ScriptedServer
from bench.tcp_proxy import TcpProxy
from cli.main import cli
from producers.readers import Record
from producers.submit import create_run, submit_records
from shiftdown.db import session_scope
from shiftdown.schema import Document
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy
from workers import reconcile, slm
from workers.broker import in_flight

N = 8


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpProxy]:
    port = urlsplit(redis_url).port or 6379
    proxy = TcpProxy(("127.0.0.1", port)).start()
    yield proxy
    proxy.cut()


@pytest.fixture
def escalating(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    proxy: TcpProxy,
    scripted: ScriptedServer,
) -> Callable[..., None]:
    """Settings in which every document escalates, the broker reached through ``proxy``."""
    port = urlsplit(redis_url).port or 6379

    def apply(**extra: str) -> None:
        use_settings(
            SHIFTDOWN_DATABASE_URL=pg_url,
            SHIFTDOWN_BROKER_URL=redis_url.replace(f":{port}", f":{proxy.port}"),
            SHIFTDOWN_THRESHOLD="1.0",
            OPENAI_BASE_URL=scripted.base_url,
            OPENAI_API_KEY="sk-test-0123456789",
            **extra,
        )
        assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0

    return apply


def _submitted(banking: list[dict[str, str]], taxonomy: Path) -> list[int]:
    run_id, queue = create_run("handoff", Taxonomy.from_file(taxonomy), None, "test")
    records = [Record(i + 1, f"h{i}", r["text"]) for i, r in enumerate(banking[:N])]
    submit_records(run_id, records, queue)
    with session_scope() as session:
        return list(session.scalars(select(Document.id).where(Document.run_id == run_id)))


def _cut_after_commit(
    monkeypatch: pytest.MonkeyPatch, proxy: TcpProxy, back_after_s: float | None
) -> None:
    """The broker goes away right after the SLM task's commit, before its follow-ups
    are published (and comes back ``back_after_s`` later, if given)."""
    send = slm._send_follow_ups

    def cut_then_send(ids: list[int]) -> None:
        proxy.cut()
        if back_after_s is not None:
            threading.Timer(back_after_s, proxy.restore).start()
        send(ids)

    monkeypatch.setattr(slm, "_send_follow_ups", cut_then_send)


def _escalated(ids: list[int]) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).where(Document.id.in_(ids), Document.state == "escalated")
            )
            or 0
        )


def test_a_broker_blip_between_commit_and_publish_is_waited_out(
    escalating: Callable[..., None],
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
) -> None:
    escalating(SHIFTDOWN_PUBLISH_RETRY_S="20")
    ids = _submitted(banking, banking_taxonomy)
    _cut_after_commit(monkeypatch, proxy, back_after_s=2.0)
    assert slm.process_batch(ids) == N
    assert set(ids) <= in_flight([get_settings().frontier_queue])


def test_a_longer_outage_is_healed_by_the_sweep_without_an_operator(
    escalating: Callable[..., None],
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
) -> None:
    # Publishes give up after about a second; the sweep looks at 3 documents a pass.
    escalating(
        SHIFTDOWN_PUBLISH_RETRY_S="0",
        SHIFTDOWN_RECONCILE_AFTER_S="0",
        SHIFTDOWN_RECONCILE_MAX_PER_PASS="3",
    )
    ids = _submitted(banking, banking_taxonomy)
    _cut_after_commit(monkeypatch, proxy, back_after_s=None)
    with pytest.raises((OperationalError, redis.ConnectionError, ConnectionError)):
        slm.process_batch(ids)
    proxy.restore()
    frontier = get_settings().frontier_queue
    # What the old code left for an operator: committed escalations, no task anywhere.
    assert _escalated(ids) == N
    assert not set(ids) & in_flight([frontier])
    sent = 0
    for _ in range(5):
        result = reconcile.sweep()
        assert not result.skipped and result.requeued_frontier <= 3  # bounded per pass
        sent += result.requeued_frontier
    assert sent == N  # each once: a document already sent again is carried by the broker
    assert set(ids) <= in_flight([frontier])


def test_one_sweep_at_a_time_across_workers(escalating: Callable[..., None]) -> None:
    escalating()
    # Another worker's pass holds the lock for its transaction.
    with session_scope() as other:
        assert other.scalar(select(func.pg_try_advisory_xact_lock(reconcile.SWEEP_LOCK)))
        assert reconcile.sweep().skipped
    assert not reconcile.sweep().skipped
