"""The cascade in one process (embedded mode) on SQLite, with real llama.cpp inference
and a scripted OpenAI-compatible server on loopback for the frontier."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bench.scripted_server import ScriptedServer, completion, offered_labels
from cli.main import cli
from producers.escalate import escalate_pending
from shiftdown.costs import DEFAULT_PRICES
from shiftdown.db import session_scope
from shiftdown.prompts import NONE_OF_THESE
from shiftdown.schema import DocState, Document, FrontierCall, InputError, Prediction
from tests.helpers import counts, final_labels
from workers import frontier, slm


def _run(args: list[str]) -> Any:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _report(run_id: int) -> dict[str, Any]:
    out = _run(["report", str(run_id), "--format", "json"]).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
def docs(banking: list[dict[str, str]], write_jsonl: Callable[..., Path]) -> Path:
    return write_jsonl([{"id": f"d{i}", "text": r["text"]} for i, r in enumerate(banking[:40])])


def test_everything_escalates_and_parks_without_a_frontier(
    use_settings: Callable[..., None],
    sqlite_url: str,
    docs: Path,
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    reference: dict[str, str],
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url, SHIFTDOWN_THRESHOLD="1.0")
    _run(["run", str(docs), "--taxonomy", str(banking_taxonomy)])
    c = counts(1)
    assert c["states"] == {DocState.AWAITING_FRONTIER: 40}
    assert c["stages"] == {"slm": 40} and c["frontier_calls"] == 0
    report = _report(1)
    assert report["escalation_rate"] == 1.0 and report["final"] == 0
    assert "awaiting_frontier" in _run(["status"]).output
    # Parked documents are settled: waiting returns at once.
    assert "40 document(s) settled" in _run(["wait", "1", "--timeout", "5"]).output

    # A frontier appears: the parked documents are sent once, and nothing else is.
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
    )
    out = _run(["escalate", "--pending"]).output
    assert "40 document(s)" in out
    c = counts(1)
    assert c["states"] == {DocState.CLASSIFIED: 40}
    assert c["stages"] == {"slm": 40, "frontier": 40} and c["frontier_calls"] == 40
    with session_scope() as s:
        texts = dict(s.execute(select(Document.external_id, Document.text)).all())
    assert all(
        label == reference[texts[ext]] and src == "frontier"
        for ext, (label, src) in final_labels(1).items()
    )
    assert escalate_pending() == 0


def test_escalation_below_threshold_and_costs_from_recorded_tokens(
    use_settings: Callable[..., None],
    sqlite_url: str,
    docs: Path,
    banking_taxonomy: Path,
    scripted: ScriptedServer,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="0.5",
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
        SHIFTDOWN_FRONTIER_MODEL="gpt-4o",
    )
    _run(["run", str(docs), "--taxonomy", str(banking_taxonomy)])
    with session_scope() as s:
        confidences = {d.id: (d.state, d.final_stage) for d in s.scalars(select(Document))}
    report = _report(1)
    c = counts(1)
    escalated = c["stages"]["frontier"]
    assert 0 < escalated < 40, "the zero-shot model should be sure of some and unsure of others"
    assert report["escalated"] == escalated and c["frontier_calls"] == escalated
    assert report["escalation_rate"] == pytest.approx(escalated / 40)
    assert all(state == DocState.CLASSIFIED for state, _ in confidences.values())
    sources = {src for _, src in final_labels(1).values()}
    assert sources == {"slm", "frontier"}
    # Every SLM prediction that escalated is below the threshold; every kept one is not.
    with session_scope() as s:
        rows = s.execute(
            select(Document.final_stage, FrontierCall.id).join(
                FrontierCall, FrontierCall.document_id == Document.id, isouter=True
            )
        ).all()
    assert all((stage == "frontier") == (call is not None) for stage, call in rows)

    price = DEFAULT_PRICES["gpt-4o"]
    per_call = (120 * price.input_per_1m + 7 * price.output_per_1m) / 1e6
    f = report["frontier"]
    assert f["calls"] == escalated
    assert f["prompt_tokens"] == 120 * escalated and f["completion_tokens"] == 7 * escalated
    assert f["usd"] == pytest.approx(per_call * escalated, rel=1e-6)
    assert report["usd_per_1k_docs"] == pytest.approx(per_call * escalated / 40 * 1000, rel=1e-4)
    cf = report["counterfactual"]
    assert cf["all_frontier_usd"] == pytest.approx(per_call * 40, rel=1e-4)
    assert cf["saving_pct"] == pytest.approx(100 * (1 - escalated / 40), abs=0.01)
    assert "recorded" in cf["basis"]
    assert report["latency"]["slm"]["n"] == 40 and report["latency"]["slm"]["p95_ms"] > 0
    assert report["docs_per_s"] > 0


def test_rerunning_tasks_writes_nothing_twice(
    use_settings: Callable[..., None],
    sqlite_url: str,
    docs: Path,
    banking_taxonomy: Path,
    scripted: ScriptedServer,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="0.5",
        OPENAI_BASE_URL=scripted.base_url,
    )
    _run(["run", str(docs), "--taxonomy", str(banking_taxonomy)])
    before = counts(1)
    with session_scope() as s:
        ids = list(s.scalars(select(Document.id).order_by(Document.id)))
    # Second deliveries of every task, as a redelivery after a lost ack would make them.
    assert slm.classify_batch.apply(args=[ids]).get() == 0
    for doc_id in ids:
        assert frontier.classify_with_frontier.apply(args=[doc_id]).get() == "noop"
    assert counts(1) == before
    assert before["duplicates"] == 0 and before["labelled"] == 40
    assert len(scripted.requests) == before["frontier_calls"]


def test_malformed_lines_are_recorded_and_the_rest_goes_through(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    path = write_jsonl(
        [
            {"id": "a", "text": "My card has not arrived yet"},
            "{broken json",
            {"id": "b", "text": ""},
            {"id": "c", "body": "wrong field"},
            {"id": "a", "text": "duplicate id"},
            {"id": "d", "text": "How do I change my PIN?"},
        ]
    )
    result = CliRunner().invoke(cli, ["submit", str(path), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1"
    assert "4 record(s) rejected" in result.stderr
    with session_scope() as s:
        errors = {e.line_no: e.error for e in s.scalars(select(InputError))}
    assert set(errors) == {2, 3, 4, 5}
    assert "invalid JSON" in errors[2] and "empty" in errors[3]
    assert "missing field 'text'" in errors[4] and "duplicate id 'a'" in errors[5]
    c = counts(1)
    assert c["documents"] == 2 and c["stages"] == {"slm": 2}
    assert _report(1)["rejected"] == 4


def test_stdin_and_json_schema_fallback(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    reference: dict[str, str],
) -> None:
    server = ScriptedServer(
        label_for=lambda t: reference.get(t, "card_arrival"), reject_json_schema=True
    ).start()
    try:
        use_settings(
            SHIFTDOWN_DATABASE_URL=sqlite_url,
            SHIFTDOWN_THRESHOLD="1.0",
            OPENAI_BASE_URL=server.base_url,
        )
        texts = list(reference)[:3]
        result = CliRunner().invoke(
            cli,
            ["run", "-", "--format", "text", "--taxonomy", str(banking_taxonomy)],
            input="\n".join(texts) + "\n",
        )
        assert result.exit_code == 0, result.output
        formats = [r["response_format"]["type"] for r in server.requests]
        assert formats == ["json_schema", "json_object", "json_object", "json_object"]
        assert (
            server.requests[1]["response_format"]["schema"]["properties"]["label"]["enum"][0]
            == "card_arrival"
        )
        with session_scope() as s:
            calls = list(s.scalars(select(FrontierCall)))
        assert [c.response_format for c in calls] == ["json_object"] * 3
        assert [lbl for lbl, _ in final_labels(1).values()] == [reference[t] for t in texts]
    finally:
        server.stop()


@pytest.mark.faults
def test_frontier_answers_outside_the_taxonomy_end_failed_with_the_reason(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    def wrong(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return 200, completion(body["model"], '{"label": "not_a_label"}', 50, 5), {}

    server = ScriptedServer(label_for=lambda t: "x", script=[wrong] * 3).start()
    try:
        use_settings(
            SHIFTDOWN_DATABASE_URL=sqlite_url,
            SHIFTDOWN_THRESHOLD="1.0",
            OPENAI_BASE_URL=server.base_url,
            SHIFTDOWN_FRONTIER_TASK_RETRIES="2",
            SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.01",
        )
        path = write_jsonl([{"text": "Where is my money?"}])
        _run(["run", str(path), "--taxonomy", str(banking_taxonomy)])
        with session_scope() as s:
            doc = s.scalars(select(Document)).one()
            calls = list(s.scalars(select(FrontierCall).order_by(FrontierCall.attempt)))
        assert doc.state == DocState.FRONTIER_FAILED
        assert "outside the taxonomy" in (doc.error or "")
        # Three billed attempts (one plus two retries), each recorded once with its tokens.
        assert [c.attempt for c in calls] == [1, 2, 3]
        assert all(c.prompt_tokens == 50 and c.status == "retryable" for c in calls)
    finally:
        server.stop()


@pytest.mark.faults
def test_transient_frontier_faults_are_retried_and_every_attempt_recorded(
    use_settings: Callable[..., None],
    sqlite_url: str,
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
    reference: dict[str, str],
) -> None:
    def rate_limited(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.05"}

    def broken(body: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
        return 200, "this is not JSON", {}

    def server_error(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return 500, {"error": {"message": "upstream failure"}}, {}

    text = next(iter(reference))
    server = ScriptedServer(
        label_for=lambda t: reference[t],
        script=[rate_limited, broken, server_error],  # type: ignore[list-item]
    ).start()
    try:
        use_settings(
            SHIFTDOWN_DATABASE_URL=sqlite_url,
            SHIFTDOWN_THRESHOLD="1.0",
            OPENAI_BASE_URL=server.base_url,
            SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.01",
        )
        _run(["run", str(write_jsonl([{"text": text}])), "--taxonomy", str(banking_taxonomy)])
        with session_scope() as s:
            doc = s.scalars(select(Document)).one()
            calls = list(s.scalars(select(FrontierCall).order_by(FrontierCall.attempt)))
        assert doc.state == DocState.CLASSIFIED and doc.final_stage == "frontier"
        assert [(c.attempt, c.status, c.http_status) for c in calls] == [
            (1, "retryable", 429),
            (2, "retryable", None),
            (3, "retryable", 500),
            (4, "ok", None),
        ]
        assert len(server.requests) == 4
        assert final_labels(1)["1"] == (reference[text], "frontier")
    finally:
        server.stop()


def test_narrowed_requests_offer_the_slm_top_k_and_fall_back_to_the_whole_taxonomy(
    use_settings: Callable[..., None],
    sqlite_url: str,
    docs: Path,
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    reference: dict[str, str],
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="1.0",  # every document escalates
        SHIFTDOWN_FRONTIER_TOP_K="5",
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
        SHIFTDOWN_FRONTIER_MODEL="gpt-4o",
    )
    scripted.cached_tokens = 40  # the provider served part of each prompt from its cache
    _run(["run", str(docs), "--taxonomy", str(banking_taxonomy)])

    asked: dict[str, list[list[str] | None]] = {}
    for body in scripted.requests:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        asked.setdefault(user, []).append(offered_labels(body))
    with session_scope() as s:
        slm_top = dict(
            s.execute(
                select(Document.text, Prediction.distribution)
                .join(Prediction, Prediction.document_id == Document.id)
                .where(Prediction.stage == "slm")
            ).all()
        )
        calls = s.execute(
            select(Document.text, FrontierCall.attempt, FrontierCall.offered, FrontierCall)
            .join(FrontierCall, FrontierCall.document_id == Document.id)
            .order_by(Document.id, FrontierCall.attempt)
        ).all()
    declined = 0
    for text, offers in asked.items():
        top5 = sorted(slm_top[text], key=lambda label: -slm_top[text][label])[:5]
        # First the SLM's top five and "none of these"...
        assert offers[0] is not None and offers[0][:5] == top5 and offers[0][5] == NONE_OF_THESE
        if reference[text] in top5:
            assert len(offers) == 1
        else:
            # ...and when the right label is not among them, one call with all 77.
            assert len(offers) == 2 and offers[1] is not None and len(offers[1]) == 77
            declined += 1
    assert 0 < declined < 40, "the zero-shot model ranks some labels right and some wrong"
    assert len(calls) == len(scripted.requests) == 40 + declined  # every call recorded
    assert [(c.attempt, c.offered) for c in calls if c.offered is None] == [(2, None)] * declined
    for *_, call in calls:
        assert call.status == "ok" and call.cached_tokens == 40
        # Cached prompt tokens at gpt-4o's cached-input price ($1.25 per million).
        expected = ((call.prompt_tokens - 40) * 2.5 + 40 * 1.25 + call.completion_tokens * 10) / 1e6
        assert call.cost_usd == pytest.approx(expected)
    assert all(label == reference[t] for t, (label, _) in _labels_by_text().items())


def _labels_by_text() -> dict[str, tuple[str, str]]:
    with session_scope() as s:
        texts = dict(s.execute(select(Document.external_id, Document.text)).all())
    return {texts[ext]: value for ext, value in final_labels(1).items()}


def test_an_outage_parks_escalations_and_escalate_sends_them_and_refused_ones_when_asked(
    use_settings: Callable[..., None],
    sqlite_url: str,
    docs: Path,
    banking_taxonomy: Path,
    scripted: ScriptedServer,
) -> None:
    import time

    from sqlalchemy import update

    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="1.0",
        OPENAI_BASE_URL=scripted.base_url,
        OPENAI_API_KEY="sk-test",
        SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.01",
        SHIFTDOWN_FRONTIER_BREAKER_FAILURES="3",
    )
    scripted.down_until = time.monotonic() + 3600
    _run(["run", str(docs), "--taxonomy", str(banking_taxonomy)])
    c = counts(1)
    # Nothing failed for the outage: every escalation waits, and after three calls in a
    # row found the frontier down the breaker parked the rest without calling.
    assert c["states"] == {DocState.AWAITING_FRONTIER: 40}
    assert c["frontier_calls"] == len(scripted.requests) == 3
    with session_scope() as s:
        errors = list(s.scalars(select(Document.error)))
        # Documents a frontier failed before outages parked (or that it refused).
        s.execute(
            update(Document)
            .where(Document.id <= 5)
            .values(state=DocState.FRONTIER_FAILED, error="HTTP 400: bad request")
        )
    assert all(e is not None and e.startswith("frontier unavailable") for e in errors)
    assert "circuit open" in errors[-1]

    # The frontier is back (a new process: its breaker is closed).
    scripted.down_until = 0.0
    frontier.reset_client()
    assert "35 document(s)" in _run(["escalate", "--no-failed"]).output
    assert counts(1)["states"] == {DocState.CLASSIFIED: 35, DocState.FRONTIER_FAILED: 5}
    # Refused documents fail the same way again, and are billed again: only when asked.
    assert "0 document(s)" in _run(["escalate"]).output
    assert "5 document(s)" in _run(["escalate", "--refused", "--all", "--yes"]).output
    c = counts(1)
    assert c["states"] == {DocState.CLASSIFIED: 40}
    assert c["stages"] == {"slm": 40, "frontier": 40} and c["frontier_calls"] == 43
