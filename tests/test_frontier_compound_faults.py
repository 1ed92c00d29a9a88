"""Faults that meet the frontier stage together, in one process against real Postgres and
the loopback HTTP stand-in: a store that fails during the breaker's half-open probe, a
document the frontier keeps failing on its own among parked ones, outage-shaped answers
(a maintenance page, a refused key), recovery across workers, and what ``shiftdown
escalate`` sends."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

import migrations
from bench.scripted_server import ScriptedServer
from bench.tcp_proxy import TcpProxy
from cli.main import cli
from shiftdown.db import dispose_engines, session_scope
from shiftdown.schema import (
    DocState,
    Document,
    FrontierCall,
    FrontierRecovery,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
)
from shiftdown.taxonomy import Taxonomy
from workers import frontier, frontier_recovery
from workers.frontier_breaker import UNAVAILABLE
from workers.frontier_client import CREDENTIALS
from workers.metrics import StoreCollector

LABELS = ["card_arrival", "exchange_rate", "pin_blocked", "age_limit"]
POISON = "this one request the endpoint fails every time"


class StandIn(ScriptedServer):
    """Answers with the first label, except a 500 for the poison document."""

    def default_answer(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if user == POISON:
            return 500, {"error": {"message": "internal error"}}, {}
        return super().default_answer(body)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn(label_for=lambda text: LABELS[0]).start()
    yield server
    server.stop()


@pytest.fixture
def store(
    pg_url: str, stand_in: StandIn, use_settings: Callable[..., None]
) -> Callable[..., dict[str, str]]:
    """Apply settings for an embedded store on Postgres (tasks run inline) with the
    stand-in as the frontier; returns the environment."""
    migrations.upgrade(pg_url)

    def apply(**overrides: str) -> dict[str, str]:
        env = {
            "SHIFTDOWN_DATABASE_URL": pg_url,
            "OPENAI_BASE_URL": stand_in.base_url,
            "OPENAI_API_KEY": "sk-test-0123456789",
            "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",
            "SHIFTDOWN_FRONTIER_RETRY_BASE_S": "0.01",
            "SHIFTDOWN_FRONTIER_TASK_RETRIES": "1",
            **overrides,
        }
        use_settings(**env)
        return env

    return apply


def _run(texts: list[str], state: str = DocState.ESCALATED, error: str | None = None) -> list[int]:
    """A run of ``texts`` written straight into the store in ``state``; their ids."""
    with session_scope() as s:
        if s.get(Task, "t") is None:
            taxonomy = Taxonomy.from_data(LABELS)
            s.add(
                Task(
                    name="t",
                    taxonomy=taxonomy.to_data(),
                    taxonomy_hash=taxonomy.hash,
                    threshold=0.5,
                )
            )
            s.add(ModelVersion(task_name="t", version=1, gguf_path="m.gguf", manifest={}))
            s.flush()
        version = s.scalar(select(ModelVersion.id).where(ModelVersion.task_name == "t"))
        run = Run(task_name="t", model_version_id=version, threshold=0.5, source="test")
        s.add(run)
        s.flush()
        docs = [
            Document(run_id=run.id, external_id=str(i), line_no=i, text=t, state=state, error=error)
            for i, t in enumerate(texts)
        ]
        s.add_all(docs)
        s.flush()
        return [d.id for d in docs]


def _states(ids: list[int]) -> dict[int, tuple[str, str | None]]:
    with session_scope() as s:
        rows = s.execute(
            select(Document.id, Document.state, Document.error).where(Document.id.in_(ids))
        )
        return {i: (state, error) for i, state, error in rows}


def _calls(doc_id: int) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).where(FrontierCall.document_id == doc_id)) or 0)


def test_a_store_failure_during_the_half_open_probe_hands_the_probe_back(
    store: Callable[..., dict[str, str]], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = urlsplit(pg_url).port or 5432
    proxy = TcpProxy(("127.0.0.1", port)).start()
    try:
        store(
            SHIFTDOWN_DATABASE_URL=pg_url.replace(f":{port}/", f":{proxy.port}/"),
            SHIFTDOWN_FRONTIER_BREAKER_FAILURES="1",
            SHIFTDOWN_FRONTIER_BREAKER_COOLDOWN_S="0.2",
        )
        ids = _run(["first", "second"])
        breaker = frontier.get_breaker()
        breaker.failed("HTTP 503")  # open; half-open after the cool-down
        time.sleep(0.3)
        assert breaker.state == "half-open"
        real = frontier.take_lease

        def cut_then_lease(*args: Any) -> bool:
            proxy.cut()  # Postgres goes away between the breaker's allow() and the call
            return real(*args)

        monkeypatch.setattr(frontier, "take_lease", cut_then_lease)
        with pytest.raises(Exception, match=r"(?i)connect|closed|terminat|server"):
            frontier.process_document(ids[0], retries_left=True)
        monkeypatch.setattr(frontier, "take_lease", real)
        proxy.restore()
        dispose_engines()
        # The probe was handed back: the next delivery is let through and answered.
        assert breaker.allow()
        breaker.released()
        outcome = frontier.process_document(ids[0], retries_left=True)
        assert outcome is not None and outcome[0].status == "ok"
        assert breaker.state == "closed"
        assert frontier.process_document(ids[1], retries_left=True) is not None
        assert {s for s, _ in _states(ids).values()} == {DocState.CLASSIFIED}
    finally:
        proxy.cut()


def test_a_document_the_frontier_fails_alone_ends_failed_and_recovery_goes_round_it(
    store: Callable[..., dict[str, str]],
) -> None:
    store(SHIFTDOWN_FRONTIER_DOCUMENT_FAILURES="3", SHIFTDOWN_FRONTIER_RECOVER_CHUNK="2")
    parked = _run(
        [POISON] + [f"parked {i}" for i in range(5)],
        DocState.AWAITING_FRONTIER,
        f"{UNAVAILABLE}: HTTP 503: service unavailable",
    )
    poison, others = parked[0], parked[1:]
    probes: list[int | None] = []
    for i in range(20):
        # Live traffic goes on between passes, and the frontier answers it.
        (live,) = _run([f"live {i}"])
        frontier.classify_with_frontier.apply(args=[live])
        frontier_recovery.recover_pass()
        with session_scope() as s:
            state = s.get(FrontierRecovery, 1)
            assert state is not None
            probes.append(state.probe_id)
        if not any(st == DocState.AWAITING_FRONTIER for st, _ in _states(parked).values()):
            break
    states = _states(parked)
    assert all(states[d][0] == DocState.CLASSIFIED for d in others), states
    state, error = states[poison]
    assert state == DocState.FRONTIER_FAILED and error and error.startswith(frontier.FAILED_ALONE)
    # Never the same probe twice in a row, and the poison document probed once at most.
    real = [p for p in probes if p is not None]
    assert all(a != b for a, b in itertools.pairwise(real)), probes
    assert _calls(poison) <= 3 * 2 + 2, _calls(poison)


def test_a_frontier_down_for_everyone_fails_nothing(
    store: Callable[..., dict[str, str]], stand_in: StandIn
) -> None:
    store(SHIFTDOWN_FRONTIER_DOCUMENT_FAILURES="2", SHIFTDOWN_FRONTIER_BREAKER_FAILURES="100")
    ids = _run([f"doc {i}" for i in range(3)])
    stand_in.down_until = time.monotonic() + 3600
    for _ in range(4):
        for doc_id in ids:
            frontier.classify_with_frontier.apply(args=[doc_id])
        frontier_recovery.recover_pass()
    stand_in.down_until = 0.0
    states = _states(ids)
    assert {s for s, _ in states.values()} <= {DocState.AWAITING_FRONTIER, DocState.ESCALATED}, (
        states
    )


@pytest.mark.parametrize("window", ["maintenance_until", "refuse_key_until"])
def test_a_maintenance_page_or_a_refused_key_parks_documents_and_opens_the_breaker(
    store: Callable[..., dict[str, str]], stand_in: StandIn, window: str
) -> None:
    store(SHIFTDOWN_FRONTIER_BREAKER_FAILURES="3", SHIFTDOWN_FRONTIER_TASK_RETRIES="2")
    ids = _run([f"doc {i}" for i in range(6)])
    setattr(stand_in, window, time.monotonic() + 3600)
    for doc_id in ids:
        frontier.classify_with_frontier.apply(args=[doc_id])
    states = _states(ids)
    assert {s for s, _ in states.values()} == {DocState.AWAITING_FRONTIER}, states
    assert all(e and e.startswith(UNAVAILABLE) for _, e in states.values()), states
    assert frontier.get_breaker().state == "open"
    # The breaker stopped the calls: three (the threshold), the rest parked without one.
    assert len(stand_in.requests) <= 3 + 2, len(stand_in.requests)
    if window == "refuse_key_until":
        assert all(CREDENTIALS in (e or "") for _, e in states.values()), states
        metrics = {m.name: m for m in StoreCollector().collect()}
        refused = metrics["shiftdown_frontier_credentials_refused"].samples
        assert sum(s.value for s in refused) >= 1
        report = CliRunner().invoke(cli, ["report", str(_run_of(ids[0]))])
        assert CREDENTIALS in report.output, report.output
    # Back: the recovery pass sends them, and every one is answered.
    setattr(stand_in, window, 0.0)
    frontier.reset_client()
    for _ in range(4):
        frontier_recovery.recover_pass()
    assert {s for s, _ in _states(ids).values()} == {DocState.CLASSIFIED}


def _run_of(doc_id: int) -> int:
    with session_scope() as s:
        return int(s.get_one(Document, doc_id).run_id)


def test_recovery_sends_in_chunks_and_stops_at_a_new_outage(
    store: Callable[..., dict[str, str]], stand_in: StandIn
) -> None:
    store(
        SHIFTDOWN_FRONTIER_RECOVER_CHUNK="4",
        SHIFTDOWN_FRONTIER_BREAKER_FAILURES="100",
        SHIFTDOWN_FRONTIER_TASK_RETRIES="0",
    )
    ids = _run(
        [f"doc {i}" for i in range(20)], DocState.AWAITING_FRONTIER, f"{UNAVAILABLE}: HTTP 503"
    )
    assert frontier_recovery.recover_pass() == 1  # the probe
    assert frontier_recovery.recover_pass() == 4  # answered: the first chunk
    assert frontier_recovery.recover_pass() == 4
    stand_in.down_until = time.monotonic() + 3600
    assert frontier_recovery.recover_pass() == 4  # this chunk meets the new outage
    # Parked again, all four: no more chunks, one probe at a time.
    assert frontier_recovery.recover_pass() == 1
    assert frontier_recovery.recover_pass() == 1
    stand_in.down_until = 0.0
    sent = sum(frontier_recovery.recover_pass() for _ in range(8))
    assert sent >= 20 - 8 - 1
    assert {s for s, _ in _states(ids).values()} == {DocState.CLASSIFIED}
    # Then idle: the next outage starts from a probe again.
    with session_scope() as s:
        state = s.get_one(FrontierRecovery, 1)
        assert state.probe_id is None and state.chunk_to is None


def test_one_recovery_pass_at_a_time_across_workers(store: Callable[..., dict[str, str]]) -> None:
    from workers.frontier_recovery import RECOVER_LOCK

    store()
    _run(["a", "b"], DocState.AWAITING_FRONTIER, f"{UNAVAILABLE}: HTTP 503")
    with session_scope() as other:
        assert other.scalar(select(func.pg_try_advisory_xact_lock(RECOVER_LOCK)))
        assert frontier_recovery.recover_pass() == 0  # another worker's pass holds it
    assert frontier_recovery.recover_pass() == 1


def test_an_unfamiliar_document_asks_the_whole_taxonomy(
    store: Callable[..., dict[str, str]], stand_in: StandIn
) -> None:
    store(SHIFTDOWN_FRONTIER_TOP_K="2")
    familiar, unfamiliar = _run(["familiar", "unfamiliar"])
    with session_scope() as s:
        for doc_id, flag in ((familiar, False), (unfamiliar, True)):
            doc = s.get_one(Document, doc_id)
            s.add(
                Prediction(
                    document_id=doc_id,
                    run_id=doc.run_id,
                    stage=Stage.SLM,
                    label=LABELS[1],
                    confidence=0.9,
                    escalated=True,
                    unfamiliar=flag,
                    distribution={
                        LABELS[1]: 0.9,
                        LABELS[2]: 0.05,
                        LABELS[3]: 0.03,
                        LABELS[0]: 0.02,
                    },
                    model="slm",
                    latency_ms=1.0,
                )
            )
    for doc_id in (familiar, unfamiliar):
        frontier.classify_with_frontier.apply(args=[doc_id])
    with session_scope() as s:
        calls = s.execute(
            select(FrontierCall.document_id, FrontierCall.offered).order_by(FrontierCall.id)
        ).all()
    offered = {d: [o for doc, o in calls if doc == d] for d in (familiar, unfamiliar)}
    # Narrowed to the SLM's top two (the stand-in's label is not among them: "none of
    # these", then the whole taxonomy); the unfamiliar one asks the whole taxonomy at once.
    assert offered[familiar] == [2, None]
    assert offered[unfamiliar] == [None]


@pytest.fixture
def refused_and_parked(store: Callable[..., dict[str, str]]) -> dict[str, list[int]]:
    store()
    return {
        "parked": _run(["p1", "p2"], DocState.AWAITING_FRONTIER, None),
        "outage": _run(
            ["o1"], DocState.FRONTIER_FAILED, f"{frontier.FAILED_ALONE} (8 calls): HTTP 500"
        ),
        "refused": _run(["r1", "r2"], DocState.FRONTIER_FAILED, "HTTP 400: bad request"),
    }


def test_escalate_sends_parked_and_outage_failed_documents_but_not_refused_ones(
    refused_and_parked: dict[str, list[int]],
) -> None:
    runner = CliRunner()
    dry = runner.invoke(cli, ["escalate", "--dry-run"])
    assert dry.exit_code == 0 and "3 document(s) would be sent" in dry.output, dry.output
    sent = runner.invoke(cli, ["escalate"])
    assert sent.exit_code == 0 and "3 document(s) sent" in sent.output, sent.output
    states = _states(refused_and_parked["refused"])
    assert {s for s, _ in states.values()} == {DocState.FRONTIER_FAILED}
    assert {s for s, _ in _states(refused_and_parked["parked"]).values()} == {DocState.CLASSIFIED}


def test_escalate_refused_needs_a_run_or_all_and_asks_first(
    refused_and_parked: dict[str, list[int]],
) -> None:
    runner = CliRunner()
    bare = runner.invoke(cli, ["escalate", "--refused"])
    assert bare.exit_code == 2 and "--run RUN or --all" in bare.output, bare.output
    declined = runner.invoke(cli, ["escalate", "--refused", "--all"], input="n\n")
    assert declined.exit_code == 1 and "2 of them refused" in declined.output, declined.output
    assert {s for s, _ in _states(refused_and_parked["refused"]).values()} == {
        DocState.FRONTIER_FAILED
    }
    run = _run_of(refused_and_parked["refused"][0])
    sent = runner.invoke(cli, ["escalate", "--refused", "--run", str(run), "--yes"])
    assert sent.exit_code == 0 and "2 document(s) sent" in sent.output, sent.output
    assert {s for s, _ in _states(refused_and_parked["refused"]).values()} == {DocState.CLASSIFIED}


def test_escalate_pending_sends_only_parked_documents(
    refused_and_parked: dict[str, list[int]],
) -> None:
    result = CliRunner().invoke(cli, ["escalate", "--pending"])
    assert result.exit_code == 0 and "2 document(s) sent" in result.output, result.output
    assert (
        _states(refused_and_parked["outage"])[refused_and_parked["outage"][0]][0]
        == DocState.FRONTIER_FAILED
    )


def test_documents_are_moved_in_chunks_past_one_statement_s_parameters(
    store: Callable[..., dict[str, str]],
) -> None:
    store()
    (first,) = _run(["x"], DocState.AWAITING_FRONTIER)
    n = 70_000
    with session_scope() as s:
        run_id = s.get_one(Document, first).run_id
        s.execute(
            Document.__table__.insert(),
            [
                {
                    "run_id": run_id,
                    "external_id": f"bulk{i}",
                    "line_no": i,
                    "text": "x",
                    "state": DocState.AWAITING_FRONTIER,
                }
                for i in range(n)
            ],
        )
    with session_scope() as s:
        ids = list(s.scalars(select(Document.id).where(Document.run_id == run_id)))
        # Postgres takes at most 65,535 parameters in one statement.
        assert len(frontier_recovery.move_to_escalated(s, ids)) == n + 1
