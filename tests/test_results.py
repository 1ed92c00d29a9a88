"""``shiftdown results``: every settled document once, in id order, in constant memory;
``--follow`` as documents settle out of order; ``run --out``."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update

import migrations
from bench.scripted_server import ScriptedServer
from cli.main import cli
from cli.results import ResultWriter
from shiftdown.db import session_scope
from shiftdown.results import FIELDS, FINAL, export_pages, follow_results
from shiftdown.schema import DocState, Document, FrontierCall, Prediction, Run, Stage, utcnow
from tests.fake_run import CALL_USD, FakeRun, write_fake_run

EXTRA_USD = 0.0125  # a failed, billed attempt before the call that answered


def _use_store(url: str, use_settings: Callable[..., None]) -> None:
    migrations.upgrade(url)  # a no-op on the SQLite fixture, already at head
    use_settings(SHIFTDOWN_DATABASE_URL=url)


def _expected(run_id: int) -> dict[int, dict[str, Any]]:
    """The settled documents of the run, straight from the tables."""
    with session_scope() as s:
        docs = s.execute(
            select(Document.id, Document.external_id, Document.state, Document.final_stage).where(
                Document.run_id == run_id, Document.state.in_(FINAL)
            )
        ).all()
        labels = dict(
            s.execute(
                select(Prediction.document_id, Prediction.label).join(
                    Document,
                    (Document.id == Prediction.document_id)
                    & (Document.final_stage == Prediction.stage),
                )
            ).all()
        )
    return {
        d: {"external_id": ext, "state": st, "stage": stage, "label": labels.get(d)}
        for d, ext, st, stage in docs
    }


def _fake(n: int, **kw: Any) -> FakeRun:
    """A fake run, one escalated document billed twice, one with producer metadata."""
    fake = write_fake_run(n, escalate_share=0.3, **kw)
    with session_scope() as s:
        first = s.execute(
            select(Document.id, Document.run_id)
            .where(Document.run_id == fake.run_id, Document.final_stage == Stage.FRONTIER)
            .order_by(Document.id)
            .limit(1)
        ).one()
        s.execute(
            insert(FrontierCall).values(
                document_id=first.id,
                run_id=first.run_id,
                attempt=0,
                model="gpt-4o",
                status="error",
                cost_usd=EXTRA_USD,
                latency_ms=100.0,
            )
        )
        s.execute(
            update(Document)
            .where(Document.run_id == fake.run_id, Document.external_id == "0")
            .values(meta={"ticket": "T-0", "tags": ["a", "ü"]})
        )
    return fake


@pytest.mark.parametrize("store", ["sqlite_url", "pg_url"])
def test_pages_give_every_settled_document_once_in_id_order(
    store: str, request: pytest.FixtureRequest, use_settings: Callable[..., None]
) -> None:
    _use_store(request.getfixturevalue(store), use_settings)
    fake = _fake(57, queued=5)
    write_fake_run(9, seed=2)  # another run, never in this one's results

    rows = [row for page in export_pages(fake.run_id, page_size=7) for row in page]
    ids = [r.document_id for r in rows]
    assert ids == sorted(set(ids)) and len(ids) == 52
    expected = _expected(fake.run_id)
    assert set(ids) == set(expected)
    for row in rows:
        want = expected[row.document_id]
        assert (row.external_id, row.state, row.stage, row.label) == (
            want["external_id"],
            want["state"],
            want["stage"],
            want["label"],
        )
        assert row.run_id == fake.run_id
        # The confidence is the final stage's: the fake frontier gives none.
        assert row.confidence == (None if row.stage == Stage.FRONTIER else 0.9)
    # Frontier dollars are summed over every billed attempt of the document.
    costs = sorted(r.frontier_cost_usd for r in rows if r.stage == Stage.FRONTIER)
    assert costs[:-1] == pytest.approx([CALL_USD] * (len(costs) - 1))
    assert costs[-1] == pytest.approx(CALL_USD + EXTRA_USD)
    assert sum(costs) == pytest.approx(fake.frontier_usd + EXTRA_USD)
    assert all(r.frontier_cost_usd == 0.0 for r in rows if r.stage == Stage.SLM)
    assert next(r.meta for r in rows if r.external_id == "0") == {
        "ticket": "T-0",
        "tags": ["a", "ü"],
    }


def test_csv_and_jsonl(sqlite_url: str, use_settings: Callable[..., None], tmp_path: Path) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    fake = _fake(23, queued=3)
    runner = CliRunner()

    out = runner.invoke(cli, ["results", "--page-size", "4"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 20 and all(list(line) == list(FIELDS) for line in lines)
    assert "3 not settled yet" in out.stderr
    by_ext = {line["external_id"]: line for line in lines}
    assert by_ext["0"]["meta"] == {"ticket": "T-0", "tags": ["a", "ü"]}
    assert sum(line["frontier_cost_usd"] for line in lines) == pytest.approx(
        fake.frontier_usd + EXTRA_USD
    )

    out = runner.invoke(cli, ["results", str(fake.run_id), "--format", "csv"])
    assert out.exit_code == 0, out.output
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert out.stdout.splitlines()[0] == ",".join(FIELDS)
    assert [r["document_id"] for r in table] == [str(line["document_id"]) for line in lines]
    assert [r["label"] for r in table] == [line["label"] for line in lines]
    assert json.loads(next(r["meta"] for r in table if r["external_id"] == "0"))["ticket"] == "T-0"
    assert next(r["meta"] for r in table if r["external_id"] == "1") == ""

    # --out: the format follows the extension; --format wins over it.
    target = tmp_path / "labels.csv"
    out = runner.invoke(cli, ["results", "--out", str(target), "--page-size", "3"])
    assert out.exit_code == 0 and "wrote 20 result(s)" in out.stderr
    assert (
        target.read_text(encoding="utf-8")
        == runner.invoke(cli, ["results", "--format", "csv"]).stdout
    )
    target = tmp_path / "labels.txt"
    runner.invoke(cli, ["results", "--out", str(target), "--format", "csv"])
    assert target.read_text(encoding="utf-8").startswith("document_id,run_id,")

    out = runner.invoke(cli, ["results", "99"])
    assert out.exit_code == 1 and "no run 99" in out.output


def _settle(run_id: int, doc_ids: list[int], state: DocState, stage: Stage | None) -> None:
    if not doc_ids:
        return
    with session_scope() as s:
        s.execute(
            update(Document).where(Document.id.in_(doc_ids)).values(state=state, final_stage=stage)
        )
        if stage is not None:
            s.execute(
                insert(Prediction),
                [
                    {
                        "document_id": d,
                        "run_id": run_id,
                        "stage": stage,
                        "label": f"label_{d % 30:02d}",
                        "confidence": 0.8,
                        "escalated": False,
                        "model": "fake",
                        "latency_ms": 1.0,
                    }
                    for d in doc_ids
                ],
            )


@pytest.mark.parametrize("store", ["sqlite_url", "pg_url"])
def test_follow_prints_each_document_once_as_it_settles(
    store: str, request: pytest.FixtureRequest, use_settings: Callable[..., None]
) -> None:
    _use_store(request.getfixturevalue(store), use_settings)
    fake = write_fake_run(60, queued=60)  # an open run, nothing settled yet
    run_id = fake.run_id
    with session_scope() as s:
        first_ids = list(s.scalars(select(Document.id).where(Document.run_id == run_id)))
    submitted = threading.Event()
    errors: list[BaseException] = []

    def produce_and_settle() -> None:
        try:
            rng = random.Random(7)
            ids = first_ids[:]
            rng.shuffle(ids)
            # The lowest id stays in flight until late: the window spans the run.
            ids.remove(min(first_ids))
            ids.append(min(first_ids))
            parked = set(ids[:6])
            i = 0
            while i < len(ids):
                chunk = ids[i : i + 4]
                _settle(run_id, [d for d in chunk if d in parked], DocState.AWAITING_FRONTIER, None)
                done = [d for d in chunk if d not in parked]
                _settle(run_id, done[:1], DocState.FAILED, None)
                _settle(run_id, done[1:], DocState.CLASSIFIED, Stage.SLM)
                if i == 20:
                    # A streaming producer adds documents to the open run.
                    with session_scope() as s:
                        more = s.scalars(
                            insert(Document).returning(Document.id),
                            [
                                {
                                    "run_id": run_id,
                                    "external_id": f"late{k}",
                                    "line_no": 100 + k,
                                    "text": "late",
                                    "state": DocState.QUEUED,
                                }
                                for k in range(8)
                            ],
                        ).all()
                    ids.extend(sorted(more, reverse=True))
                i += 4
                time.sleep(0.01)
            # Everything is settled, but the run is open: the follower must not stop yet.
            time.sleep(0.3)
            submitted.set()
            with session_scope() as s:
                s.execute(update(Run).where(Run.id == run_id).values(submitted_at=utcnow()))
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=produce_and_settle)
    thread.start()
    seen: list[int] = []
    streamed = 0  # printed while documents were still settling
    deadline = time.monotonic() + 60

    def sleep(seconds: float) -> None:
        # The follower never ends if the settling thread died: fail instead of hanging.
        assert not errors and time.monotonic() < deadline, errors
        time.sleep(seconds)

    follower = follow_results(run_id, poll_s=0.02, max_poll_s=0.05, page_size=5, sleep=sleep)
    for page in follower:
        seen.extend(r.document_id for r in page)
        if not submitted.is_set():
            streamed = len(seen)
        assert all(r.state in FINAL for r in page)
    ended_after_submit = submitted.is_set()
    thread.join()
    assert not errors
    assert ended_after_submit and streamed > 10
    assert len(seen) == len(set(seen)) == 68 - 6
    assert set(seen) == set(_expected(run_id))


def test_follow_cli_on_a_settled_run_ends_with_the_parked_count(
    sqlite_url: str, use_settings: Callable[..., None]
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    fake = write_fake_run(30, escalate_share=0.3, parked=True)
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == fake.run_id).values(submitted_at=utcnow()))
    out = CliRunner().invoke(cli, ["results", "--follow", "--page-size", "4"])
    assert out.exit_code == 0, out.output
    assert len(out.stdout.splitlines()) == 30 - fake.parked
    assert f"{fake.parked} awaiting the frontier" in out.stderr


def _peak_export(run_id: int) -> int:
    with open(os.devnull, "w", encoding="utf-8") as sink:
        writer = ResultWriter(sink, "jsonl")
        tracemalloc.start()
        try:
            for page in export_pages(run_id, page_size=500):
                writer.write_page(page)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_export_memory_does_not_grow_with_the_run(
    sqlite_url: str, use_settings: Callable[..., None]
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    small = write_fake_run(2_000, seed=3)
    big = write_fake_run(20_000, seed=4)
    _peak_export(small.run_id)  # warm SQLAlchemy's statement caches
    peak_small = _peak_export(small.run_id)
    peak_big = _peak_export(big.run_id)
    # Loading the big run whole would take well over 10 MB.
    assert peak_big < 1.5 * peak_small + 512 * 1024, (peak_small, peak_big)


def test_run_out_writes_the_labels(
    sqlite_url: str,
    use_settings: Callable[..., None],
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    scripted: ScriptedServer,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="0.5",
        OPENAI_BASE_URL=scripted.base_url,
    )
    docs = write_jsonl([{"id": f"t{i}", "text": r["text"]} for i, r in enumerate(banking[:6])])
    labels = set(json.loads(banking_taxonomy.read_text()))
    target = tmp_path / "labelled.csv"
    result = CliRunner().invoke(
        cli,
        ["run", str(docs), "--taxonomy", str(banking_taxonomy), "--out", str(target)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(target.open(encoding="utf-8", newline="")))
    assert sorted(r["external_id"] for r in rows) == [f"t{i}" for i in range(6)]
    for row in rows:
        assert row["label"] in labels and row["stage"] in ("slm", "frontier")
        assert (float(row["frontier_cost_usd"]) > 0) == (row["stage"] == "frontier")


def test_rows_as_dicts_hold_every_field_in_order() -> None:
    """The shallow copies that replaced ``dataclasses.asdict`` on the per-document paths
    (the SLM store, the results stream) give what it gave: every field, in order."""
    from dataclasses import asdict

    from shiftdown.results import ResultRow
    from workers.store import PredictionRow

    result = ResultRow(7, 1, "x-7", "classified", "card_arrival", "slm", 0.9, 0.0, None, {"a": 1})
    assert result.as_dict() == asdict(result) and list(result.as_dict()) == list(FIELDS)
    prediction = PredictionRow(
        7, 1, Stage.SLM, "card_arrival", 0.9, "m", 12.5, 30, distribution={"card_arrival": 0.9}
    )
    row = prediction.as_row()
    assert row == asdict(prediction) and list(row) == list(asdict(prediction))
