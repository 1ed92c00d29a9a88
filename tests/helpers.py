"""What the pipeline tests share: queries that check the store, and real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from click.testing import CliRunner
from sqlalchemy import func, select, text

from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Document, FrontierCall, Prediction, Stage


def counts(run_id: int) -> dict[str, Any]:
    """Documents by state, predictions by stage, duplicates, frontier calls."""
    with session_scope() as s:
        states = dict(
            s.execute(
                select(Document.state, func.count())
                .where(Document.run_id == run_id)
                .group_by(Document.state)
            ).all()
        )
        stages = dict(
            s.execute(
                select(Prediction.stage, func.count())
                .where(Prediction.run_id == run_id)
                .group_by(Prediction.stage)
            ).all()
        )
        dup = s.scalar(
            select(func.count()).select_from(
                select(Prediction.document_id, Prediction.stage)
                .where(Prediction.run_id == run_id)
                .group_by(Prediction.document_id, Prediction.stage)
                .having(func.count() > 1)
                .subquery()
            )
        )
        calls = s.scalar(select(func.count()).where(FrontierCall.run_id == run_id))
        labelled = s.execute(
            text("SELECT count(*), count(label) FROM document_labels WHERE run_id = :r"),
            {"r": run_id},
        ).one()
    return {
        "states": states,
        "stages": stages,
        "duplicates": dup,
        "frontier_calls": calls,
        "documents": labelled[0],
        "labelled": labelled[1],
    }


def final_labels(run_id: int) -> dict[str, tuple[str, str]]:
    """external id -> (label, source) from the document_labels view."""
    with session_scope() as s:
        rows = s.execute(
            text("SELECT external_id, label, source FROM document_labels WHERE run_id = :r"),
            {"r": run_id},
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_module(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """``python -m ARGS`` with only ``env``'s shiftdown settings, in its own process group
    (so a signal reaches a Celery worker's pool children too)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTDOWN_", "OPENAI_"))}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env={**base, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def celery_worker(
    queues: str, env: dict[str, str], log: IO[bytes], *extra: str
) -> subprocess.Popen[bytes]:
    """A real Celery worker process of ``workers.app`` on ``queues``."""
    return start_module(
        [
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            *extra,
        ],
        env,
        log,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal a process group and wait; SIGKILL if it does not end in time."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def slm_done(run_id: int) -> int:
    """SLM predictions stored for the run so far."""
    with session_scope() as s:
        return int(
            s.scalar(
                select(func.count()).where(
                    Prediction.run_id == run_id, Prediction.stage == Stage.SLM
                )
            )
            or 0
        )


def submit(docs: Path, taxonomy: Path) -> int:
    """``shiftdown db upgrade`` and ``submit`` in this process; returns the run id."""
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(cli, ["submit", str(docs), "--taxonomy", str(taxonomy)])
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip())


def settle(run_id: int, log: Path, timeout_s: int = 240) -> None:
    """``shiftdown wait`` for every document of the run; the worker log on failure."""
    waited = CliRunner().invoke(cli, ["wait", str(run_id), "--timeout", str(timeout_s)])
    assert waited.exit_code == 0, (
        f"{waited.output}{counts(run_id)}\n" + log.read_text(errors="replace")[-3000:]
    )


def figures(test: str, submitted: int, run_id: int, calls_made: int | None = None) -> None:
    """One line of the fault figures (``pytest -m faults -s`` prints them)."""
    c = counts(run_id)
    calls = "" if calls_made is None else f", frontier calls made {calls_made}"
    print(
        f"\nFIGURES {test}: submitted {submitted}, exactly one final label {c['labelled']}, "
        f"lost {submitted - c['labelled']}, duplicated {c['duplicates']}, "
        f"billed attempts recorded {c['frontier_calls']}{calls}"
    )


# Not banking: the demo model has never seen anything like them.
OFF_TOPIC = [
    "what temperature should I bake sourdough bread at",
    "the striker scored twice in the second half",
    "how many moons does jupiter have",
    "my cat keeps knocking the plant off the windowsill",
    "recommend a good hiking trail near the lake",
    "the train to the airport was delayed again",
]


def invoke(*args: str) -> Any:
    """Run a shiftdown command in this process; it must succeed."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def submit_to_a_worker(env: dict[str, str], log: Path, *submit_args: str) -> int:
    """``submit`` with a real Celery worker on the slm and frontier queues running, until
    every document of the run settled; returns the run id."""
    with log.open("wb") as out:
        worker = celery_worker("slm,frontier", env, out, "-c", "1")
        try:
            run_id = int(invoke("submit", *submit_args).stdout.strip())
            settle(run_id, log)
        finally:
            stop(worker)
    return run_id
