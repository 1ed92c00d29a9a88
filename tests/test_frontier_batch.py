"""Batch mode (SHIFTDOWN_FRONTIER_MODE=batch) against the stand-in's Batch API on
loopback, on Postgres: escalations gather into batches, every line is recorded once at
the batch price, failed lines go into a later batch, "none of these" is asked again with
the whole taxonomy, and neither a worker dying while it creates a batch nor one dying
while it records it makes anything billed or recorded twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bench.scripted_server import ScriptedServer
from cli.main import cli
from shiftdown.costs import DEFAULT_PRICES, cost_usd
from shiftdown.db import session_scope
from shiftdown.schema import BatchState, DocState, Document, FrontierBatch, FrontierCall
from tests.helpers import final_labels
from workers import batch, frontier

N = 24


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def batch_mode(
    use_settings: Callable[..., None],
    pg_url: str,
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> Path:
    use_settings(
        SHIFTDOWN_DATABASE_URL=pg_url,
        SHIFTDOWN_FRONTIER_MODE="batch",
        SHIFTDOWN_THRESHOLD="1.0",  # every document escalates
        SHIFTDOWN_FRONTIER_TOP_K="5",
        SHIFTDOWN_FRONTIER_BATCH_WAIT_S="0",
        SHIFTDOWN_FRONTIER_MODEL="gpt-4o",
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
    )
    docs = write_jsonl([{"id": f"b{i}", "text": r["text"]} for i, r in enumerate(banking[:N])])
    _invoke("db", "upgrade")
    _invoke("run", str(docs), "--taxonomy", str(banking_taxonomy))
    return docs


def _calls() -> list[FrontierCall]:
    with session_scope() as s:
        rows = list(s.scalars(select(FrontierCall).order_by(FrontierCall.id)))
        s.expunge_all()
    return rows


def test_escalations_settle_through_batches_each_line_recorded_once_at_the_batch_price(
    batch_mode: Path,
    scripted: ScriptedServer,
    reference: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = scripted.batch
    assert api is not None
    with session_scope() as s:
        waiting = s.scalar(select(func.count()).where(Document.state == DocState.ESCALATED))
    assert waiting == N and scripted.requests == []  # nothing called synchronously

    # One line fails (a 500) the first time it is sent.
    failed: set[str] = set()

    def fault(line: dict[str, Any]) -> int | None:
        if line["custom_id"].startswith("doc-3-") and "doc-3" not in failed:
            failed.add("doc-3")
            return 500
        return None

    api.line_fault = fault

    # A worker dies after creating the first batch at the provider, before recording it:
    # the next pass finds that batch by its metadata instead of paying for another.
    real_create = batch._create_at_provider
    with monkeypatch.context() as m:

        def create_then_die(batch_id: int) -> None:
            api_client = frontier.get_client().api
            data = None
            with session_scope() as session:
                data = batch._lines(session, batch_id)
            uploaded = api_client.files.create(file=("x.jsonl", data), purpose="batch")
            api_client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={batch.METADATA_KEY: str(batch_id)},
            )
            raise RuntimeError("worker died")

        m.setattr(batch, "_create_at_provider", create_then_die)
        with pytest.raises(RuntimeError):
            batch.send_pass(now=True)
    assert api.created == 1
    monkeypatch.setattr(batch, "_create_at_provider", real_create)
    batch.send_pass()
    assert api.created == 1  # adopted, not created again
    with session_scope() as s:
        first = s.scalars(select(FrontierBatch)).one()
        assert first.state == BatchState.SUBMITTED and first.requests == N

    # A worker dies while recording it, after three lines: the next pass records the rest.
    real_record = batch._record_line
    seen: list[int] = []
    with monkeypatch.context() as m:

        def record_then_die(*args: Any) -> bool:
            if len(seen) == 3:
                raise RuntimeError("worker died")
            seen.append(args[1])
            return real_record(*args)

        m.setattr(batch, "_record_line", record_then_die)
        api.polls_until_done = 0
        with pytest.raises(RuntimeError):
            batch.collect_pass()
    assert len(_calls()) == 3

    _invoke("batches", "--now", "--wait", "60")
    with session_scope() as s:
        states = dict(
            s.execute(select(Document.state, func.count()).group_by(Document.state)).all()
        )
        texts = dict(s.execute(select(Document.external_id, Document.text)).all())
    assert states == {DocState.CLASSIFIED: N}
    assert all(label == reference[texts[ext]] for ext, (label, _) in final_labels(1).items())

    calls = _calls()
    # Every line the provider answered is recorded once, at half the list price.
    answered = [c for c in calls if c.status == "ok"]
    assert len(answered) == len(api.billed)
    assert all(c.batch_id is not None for c in calls)
    for c in answered:
        expected = cost_usd("gpt-4o", c.prompt_tokens, c.completion_tokens, DEFAULT_PRICES)
        assert c.cost_usd == pytest.approx(0.5 * (expected or 0))
    per_doc_batch = {(c.document_id, c.batch_id) for c in calls}
    assert len(per_doc_batch) == len(calls)  # never two rows for one line
    # The failed line was a retryable call, and the document went into a later batch.
    retried = [c for c in calls if c.status == "retryable"]
    assert [(c.document_id, c.http_status) for c in retried] == [(3, 500)]
    assert [c.status for c in calls if c.document_id == 3][-1] == "ok"
    # Each document: its narrowed answer, or "none of these" and then the whole taxonomy.
    declined = 0
    for doc_id in range(1, N + 1):
        ok = [c.offered for c in calls if c.document_id == doc_id and c.status == "ok"]
        assert ok in ([5], [5, None]), (doc_id, ok)
        declined += ok == [5, None]
    assert 0 < declined < N
    with session_scope() as s:
        assert (s.scalar(select(func.count()).select_from(FrontierBatch)) or 0) >= 2
        first = s.get_one(FrontierBatch, first.id)
        s.expunge(first)
    # A second collector reaching a line another already recorded records nothing.
    line = batch.Line(200, None, None)
    assert not batch._record_line(first, 1, line, 0.0)
    assert len(_calls()) == len(calls)
