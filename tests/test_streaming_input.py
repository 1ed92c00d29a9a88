"""Input as it arrives: the flush policy (a chunk goes when full or when its oldest
document has lingered), ``submit`` on a slow pipe, ``submit --follow`` through rotation,
truncation and a restart, the application producer, and ``ingest --stream`` through a
consumer group with a consumer killed by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from producers.application import Producer
from producers.linger import lingering_chunks
from shiftdown.db import session_scope
from shiftdown.errors import RecordError
from shiftdown.schema import DocState, Document, InputError, Run
from tests.conftest import ROOT

DEMO_MODEL = str(ROOT / "demo" / "banking77-lora")


def _slow(items: list[int], pause_s: float) -> Iterator[int]:
    for item in items:
        yield item
        time.sleep(pause_s)


def test_a_chunk_goes_when_its_oldest_item_has_lingered() -> None:
    started = time.monotonic()
    seen: list[tuple[float, list[int]]] = []
    for chunk in lingering_chunks(_slow([1, 2, 3], 0.3), size=1000, linger_s=0.05):
        seen.append((time.monotonic() - started, chunk))
    assert [c for _, c in seen] == [[1], [2], [3]]
    # Each item within about one linger of its arrival, not at the end of the input.
    assert seen[0][0] < 0.2 and seen[1][0] < 0.5


def test_a_full_chunk_goes_at_once_and_a_fast_input_keeps_whole_chunks() -> None:
    chunks = list(lingering_chunks(iter(range(10_000)), size=1000, linger_s=5.0))
    assert [len(c) for c in chunks] == [1000] * 10
    assert [x for c in chunks for x in c] == list(range(10_000))


def test_a_read_error_comes_after_what_was_read() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("pipe gone")

    got: list[int] = []
    with pytest.raises(OSError, match="pipe gone"):
        for chunk in lingering_chunks(failing(), size=10, linger_s=0.01):
            got.extend(chunk)
    assert got == [1, 2]


def _env(db: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTDOWN_")}
    return {**env, "SHIFTDOWN_DATABASE_URL": db, "PYTHONUNBUFFERED": "1", **extra}


def _labelled(run_id: int) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    Document.run_id == run_id, Document.state != DocState.QUEUED
                )
            )
            or 0
        )


def _wait_for_run(proc: subprocess.Popen[bytes]) -> int:
    """The run id a producer prints on stderr when it starts reading."""
    stderr = proc.stderr
    assert stderr is not None
    line = stderr.readline().decode()
    assert line.startswith("run "), line
    # Drained from here on: a full pipe would block the producer's progress output.
    threading.Thread(target=stderr.read, daemon=True).start()
    return int(line.split()[1])


def test_submit_labels_the_first_line_of_a_slow_pipe_long_before_the_input_ends(
    use_settings: Callable[..., None], sqlite_url: str, banking_taxonomy: Path
) -> None:
    """The issue's command: a line, 20 s of silence, a line. The first is labelled
    within 2 s of being written, not when the input ends."""
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    args = ["submit", "-", "--format", "text", "--taxonomy", str(banking_taxonomy)]
    args += ["--task", "banking77", "--model", DEMO_MODEL]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=_env(sqlite_url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None
    try:
        run_id = _wait_for_run(proc)
        written = time.monotonic()
        proc.stdin.write(b"my card has not arrived yet\n")
        proc.stdin.flush()
        while _labelled(run_id) < 1 and time.monotonic() - written < 10:
            time.sleep(0.05)
        took = time.monotonic() - written
        print(f"first line labelled {took:.2f} s after it was written")
        assert _labelled(run_id) == 1, "the first line was not labelled while the pipe stayed open"
        assert took < 2.0, f"labelled {took:.2f} s after it was written"
        proc.stdin.write(b"how do I change my pin\n")
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert _labelled(run_id) == 2
    with session_scope() as session:
        assert session.get_one(Run, run_id).submitted_at is not None


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _texts(run_id: int) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Document.text).where(Document.run_id == run_id).order_by(Document.id)
            )
        )


def _wait_until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_follow_survives_rotation_truncation_and_a_restart(
    use_settings: Callable[..., None], sqlite_url: str, banking_taxonomy: Path, tmp_path: Path
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    log = tmp_path / "app.log"
    _append(log, ["a1 card arrival", "a2 exchange rate"])
    args = [sys.executable, "-m", "cli", "submit", "--follow", str(log), "--format", "text"]
    args += ["--taxonomy", str(banking_taxonomy), "--task", "banking77"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args, env=_env(sqlite_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )

    proc = start()
    run_id = _wait_for_run(proc)
    _wait_until(lambda: len(_texts(run_id)) == 2)
    _append(log, ["a3 pin blocked"])
    with log.open("a") as f:  # a line still being written is not read until it ends
        f.write("a4 half a li")
    _wait_until(lambda: len(_texts(run_id)) == 3)
    time.sleep(0.5)
    assert len(_texts(run_id)) == 3
    with log.open("a") as f:
        f.write("ne\n")
    _wait_until(lambda: len(_texts(run_id)) == 4)
    # Rotation: the old file renamed, a new one in its place.
    log.rename(tmp_path / "app.log.1")
    _append(log, ["b1 after rotation"])
    _wait_until(lambda: len(_texts(run_id)) == 5)
    # Truncation in place.
    log.write_text("")
    _append(log, ["c1 after truncation"])
    _wait_until(lambda: len(_texts(run_id)) == 6)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # Written while no follower ran, then a restart: those lines once, nothing twice.
    _append(log, ["c2 while stopped", "c3 while stopped"])
    proc = start()
    assert _wait_for_run(proc) == run_id
    _wait_until(lambda: len(_texts(run_id)) == 8)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert _texts(run_id) == [
        "a1 card arrival",
        "a2 exchange rate",
        "a3 pin blocked",
        "a4 half a line",
        "b1 after rotation",
        "c1 after truncation",
        "c2 while stopped",
        "c3 while stopped",
    ]
    with session_scope() as session:
        assert session.get_one(Run, run_id).submitted_at is None  # a followed run stays open
        assert not session.scalar(select(func.count()).where(InputError.run_id == run_id))


def test_the_application_producer_takes_documents_from_many_threads(
    use_settings: Callable[..., None], sqlite_url: str, banking_taxonomy: Path
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    from cli.common import ensure_schema

    ensure_schema()
    with Producer(task="banking77", taxonomy=str(banking_taxonomy)) as producer:

        def feed(t: int) -> None:
            for i in range(10):
                producer.submit(f"thread {t} query {i}: card", id=f"t{t}-{i}", meta={"t": t})

        threads = [threading.Thread(target=feed, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        producer.flush(timeout=120)
        assert len(_texts(producer.run_id)) == 40
        with pytest.raises(RecordError, match="empty"):
            producer.submit("   ")
        generated = producer.submit("no id given")
    run_id = producer.run_id
    with session_scope() as session:
        run = session.get_one(Run, run_id)
        assert run.submitted_at is not None and run.n_submitted == 41
        meta = dict(
            session.execute(
                select(Document.external_id, Document.meta).where(Document.run_id == run_id)
            ).all()
        )
    assert meta["t3-9"] == {"t": 3} and meta[generated] is None
    with pytest.raises(RecordError, match="closed"):
        producer.submit("too late")


@pytest.mark.slow
def test_stream_ingest_loses_nothing_to_a_kill_and_stores_nothing_twice(
    use_settings: Callable[..., None],
    pg_url: str,
    redis_url: str,
    banking_taxonomy: Path,
    banking: list[dict[str, str]],
) -> None:
    env = {"SHIFTDOWN_DATABASE_URL": pg_url, "SHIFTDOWN_BROKER_URL": redis_url}
    use_settings(**env)
    from cli.common import ensure_schema
    from migrations import upgrade

    upgrade(pg_url)
    ensure_schema()
    client = redis.Redis.from_url(redis_url)
    key = "incoming"
    n = 3000
    args = [sys.executable, "-m", "cli", "ingest", "--stream", key, "--consumer", "c1"]
    args += ["--taxonomy", str(banking_taxonomy), "--task", "banking77"]

    def push(lo: int, hi: int) -> None:
        pipe = client.pipeline()
        for i in range(lo, hi):
            pipe.xadd(key, {"id": f"e{i}", "text": banking[i % len(banking)]["text"]})
        pipe.execute()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args, env=_env(pg_url, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )

    def stored() -> int:
        with session_scope() as session:
            return int(session.scalar(select(func.count()).select_from(Document)) or 0)

    push(0, n // 2)
    client.xadd(key, {"text": ""})  # malformed: recorded and acknowledged
    client.xadd(key, {"text": "fine", "meta": "[1, 2]"})  # meta must be an object
    proc = start()
    run_id = _wait_for_run(proc)
    push(n // 2, n)
    _wait_until(lambda: stored() > n // 4, 60)
    proc.kill()  # kill -9, mid-stream: entries read and not acknowledged stay pending
    proc.wait()
    assert stored() < n
    proc = start()
    assert _wait_for_run(proc) == run_id
    _wait_until(lambda: stored() == n, 120)
    _wait_until(lambda: client.xpending(key, "shiftdown")["pending"] == 0, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    with session_scope() as session:
        ids = list(session.scalars(select(Document.external_id).where(Document.run_id == run_id)))
        errors = list(session.scalars(select(InputError.error).where(InputError.run_id == run_id)))
    assert sorted(ids) == sorted(f"e{i}" for i in range(n))
    assert len(errors) == 2 and any("empty" in e for e in errors), errors
    assert any("meta" in e for e in errors), errors
    assert json.loads(json.dumps(client.xinfo_groups(key)[0]["pending"])) == 0


def test_an_open_run_says_so_until_it_is_closed(
    use_settings: Callable[..., None], sqlite_url: str, banking_taxonomy: Path
) -> None:
    from click.testing import CliRunner

    from cli.common import ensure_schema
    from cli.main import cli

    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    ensure_schema()
    producer = Producer(task="banking77", taxonomy=str(banking_taxonomy))
    producer.submit("my card has not arrived yet", id="a")
    producer.close(close_run_too=False)
    run = str(producer.run_id)
    runner = CliRunner()
    assert "open" in runner.invoke(cli, ["status", run]).output
    waited = runner.invoke(cli, ["wait", run, "--timeout", "60"])
    assert waited.exit_code == 0 and "the run is open" in waited.output, waited.output
    report = runner.invoke(cli, ["report", run])
    assert "open: figures so far" in report.output, report.output
    assert runner.invoke(cli, ["close", run]).exit_code == 0
    assert "open" not in runner.invoke(cli, ["status", run]).output
    with session_scope() as session:
        assert session.get_one(Run, producer.run_id).n_submitted == 1
