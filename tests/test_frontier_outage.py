"""A frontier outage of several minutes in the middle of a run (``pytest -m faults``):
documents wait for it instead of failing, the breaker keeps the workers from calling a
dead endpoint, and once it answers every document is labelled, none billed twice."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, FrontierCall
from tests.helpers import counts, figures, stop
from tests.stack import Stack

pytestmark = pytest.mark.faults

N = 2_000
# Five minutes; SHIFTDOWN_TEST_OUTAGE_S shortens it while working on this test.
OUTAGE_S = float(os.environ.get("SHIFTDOWN_TEST_OUTAGE_S", "300"))


def _states(run_id: int) -> dict[str, int]:
    with session_scope() as s:
        rows = s.execute(
            select(Document.state, func.count())
            .where(Document.run_id == run_id)
            .group_by(Document.state)
        ).all()
    return {str(state): n for state, n in rows}


def _unfinished(run_id: int, stack: Stack) -> str:
    """What the documents not yet classified went through, for a failure's message."""
    with session_scope() as s:
        docs = s.execute(
            select(Document.id, Document.state, Document.error, Document.updated_at)
            .where(Document.run_id == run_id, Document.state != DocState.CLASSIFIED)
            .limit(5)
        ).all()
        lines = [str(tuple(d)) for d in docs]
        for doc_id, *_ in docs:
            calls = s.execute(
                select(FrontierCall.attempt, FrontierCall.status, FrontierCall.http_status).where(
                    FrontierCall.document_id == doc_id
                )
            ).all()
            lines.append(f"  {doc_id}: {calls}")
    log = stack.log.read_text(errors="replace").splitlines()
    ids = [f"document {d[0]}:" for d in docs]
    lines += [line[:200] for line in log if any(i in line for i in ids)][-20:]
    return "\n".join(lines)


def test_a_five_minute_frontier_outage_parks_documents_and_loses_none(stack: Stack) -> None:
    env = stack.use(
        # Every document escalates, so the outage meets as many as it can.
        SHIFTDOWN_THRESHOLD="1.0",
        # Delivery, not the model, is under test (as in test_faults).
        SHIFTDOWN_MAX_TEXT_CHARS="32",
        SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.5",
        SHIFTDOWN_FRONTIER_BREAKER_FAILURES="5",
        SHIFTDOWN_FRONTIER_BREAKER_COOLDOWN_S="5",
        SHIFTDOWN_FRONTIER_RECOVER_INTERVAL_S="5",
        # The broker's visibility timeout stays at its default (an hour): a probe or a
        # chunk that a busy prefork worker holds without running is gone past, after
        # workers.frontier_recovery.patience_s(), not waited for.
    )
    scripted = stack.scripted
    worker = stack.worker(env)
    try:
        run_id = stack.submit(N, "o")
        # The outage starts once the first frontier answers are in.
        deadline = time.monotonic() + 300
        while _states(run_id).get(DocState.CLASSIFIED, 0) < 100:
            assert time.monotonic() < deadline, _states(run_id)
            time.sleep(0.2)
        scripted.down_until = time.monotonic() + OUTAGE_S
        parked_most = 0
        while time.monotonic() < scripted.down_until:
            states = _states(run_id)
            assert states.get(DocState.FRONTIER_FAILED, 0) == 0, states
            parked_most = max(parked_most, states.get(DocState.AWAITING_FRONTIER, 0))
            time.sleep(1)
        during = len(scripted.requests)
        deadline = time.monotonic() + 300
        while (states := _states(run_id)).get(DocState.CLASSIFIED, 0) < N:
            assert time.monotonic() < deadline, (states, _unfinished(run_id, stack))
            time.sleep(1)
    finally:
        stop(worker)
    figures("frontier outage", N, run_id, len(scripted.requests))
    with session_scope() as s:
        unavailable = s.scalar(
            select(func.count()).where(
                FrontierCall.run_id == run_id, FrontierCall.http_status == 503
            )
        )
        billed_twice = s.scalar(
            select(func.count()).select_from(
                select(FrontierCall.document_id)
                .where(FrontierCall.run_id == run_id, FrontierCall.status == "ok")
                .group_by(FrontierCall.document_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    print(
        f"FIGURES frontier outage: {OUTAGE_S:.0f} s, at most {parked_most} documents parked at "
        f"once, {unavailable} calls met the outage, {during} requests by its end"
    )
    c = counts(run_id)
    assert states == {DocState.CLASSIFIED: N}, states  # nothing failed, nothing waits
    assert c["labelled"] == N and c["duplicates"] == 0, c
    assert billed_twice == 0
    assert c["stages"]["frontier"] == N
    # Every request the stand-in saw is recorded (no call is made and forgotten)...
    assert c["frontier_calls"] == len(scripted.requests)
    # ...and the documents waited without calling: the breaker let a few probes through.
    assert parked_most > 100
    assert unavailable < 100, unavailable


def test_a_refused_key_then_a_maintenance_page_with_a_poisoned_document_through_a_worker(
    stack: Stack,
) -> None:
    from workers.frontier import FAILED_ALONE
    from workers.frontier_client import CREDENTIALS, NOT_AN_ANSWER

    n = 200
    env = stack.use(
        SHIFTDOWN_THRESHOLD="1.0",
        SHIFTDOWN_FRONTIER_RETRY_BASE_S="0.2",
        SHIFTDOWN_FRONTIER_BREAKER_FAILURES="3",
        SHIFTDOWN_FRONTIER_BREAKER_COOLDOWN_S="2",
        SHIFTDOWN_FRONTIER_RECOVER_INTERVAL_S="2",
        SHIFTDOWN_FRONTIER_DOCUMENT_FAILURES="4",
    )
    scripted = stack.scripted
    poison = stack.banking[7]["text"]
    answer = scripted.default_answer

    def poisoned(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if user == poison:  # the endpoint fails this one request, every time
            return 500, {"error": {"message": "internal error"}}, {}
        return answer(body)

    scripted.default_answer = poisoned  # type: ignore[method-assign]
    scripted.refuse_key_until = time.monotonic() + 3600
    worker = stack.worker(env, processes=2)
    try:
        run_id = stack.submit(n, "k")
        # The key refused until a few calls have met it, then five more seconds; then
        # ten seconds of maintenance pages; then the frontier answers.
        deadline = time.monotonic() + 120
        while len(scripted.requests) < 3:
            assert time.monotonic() < deadline, "no frontier call came"
            time.sleep(0.2)
        time.sleep(5)
        scripted.maintenance_until = time.monotonic() + 10
        scripted.refuse_key_until = 0.0
        # `shiftdown wait` counts parked documents as settled for now: wait for them all.
        deadline = time.monotonic() + 240
        while sum((states := _states(run_id)).values()) < n or set(states) - {
            DocState.CLASSIFIED,
            DocState.FRONTIER_FAILED,
        }:
            assert time.monotonic() < deadline, (states, _unfinished(run_id, stack))
            time.sleep(1)
    finally:
        stop(worker)
    with session_scope() as s:
        failed = s.execute(
            select(Document.text, Document.error).where(
                Document.run_id == run_id, Document.state == DocState.FRONTIER_FAILED
            )
        ).all()
        errors = list(s.scalars(select(FrontierCall.error).where(FrontierCall.run_id == run_id)))
    # Only the poisoned document failed, for that reason; every other one was answered.
    assert [(t, (e or "").split(" (")[0]) for t, e in failed] == [(poison, FAILED_ALONE)]
    assert _states(run_id) == {DocState.CLASSIFIED: n - 1, DocState.FRONTIER_FAILED: 1}
    # Both windows were met, and neither failed a document.
    assert any(CREDENTIALS in (e or "") for e in errors)
    assert any(NOT_AN_ANSWER in (e or "") for e in errors)
    assert counts(run_id)["frontier_calls"] == len(scripted.requests)
