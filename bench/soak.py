"""Chaos soak: thousands of documents through the full stack while faults land at random
times drawn from a seed; it ends when everything has settled, with nobody calling
``shiftdown reconcile``.

The stack: a Redis server of its own (append-only file on), Postgres reached by the
workers through a proxy that can be cut, one SLM worker, one frontier worker (prefork,
several processes), and a loopback OpenAI-compatible frontier that answers with the
reference label but also, at random, with a 429 or too late for the client's timeout.
Documents arrive in batches (runs) spread over the fault window, so every fault finds
work in flight: in the producer, on the broker, in the SLM and at the frontier.

Faults, each at least once per seed and in a seeded order, one at a time:

- ``kill9-slm`` / ``kill9-frontier``: SIGKILL to the worker's whole process group, and
  a new worker a moment later;
- ``redis-restart``: Redis killed and restarted on its append-only file;
- ``redis-restart-empty``: the same, but it comes back with nothing (no persistence):
  what was queued survives only in Postgres, for the workers' reconciliation sweep;
- ``postgres-cut``: the workers' connections to Postgres dropped and refused for a while;
- ``warm-shutdown``: SIGTERM to a worker (Celery finishes what it holds), then a new one;
- ``frontier-outage``: the frontier answers every call 503 for minutes: escalated
  documents wait as ``awaiting_frontier`` (the breaker stops calling after a few) and
  the recovery pass sends them once it answers again;
- ``postgres-cut-probe``: the frontier goes down and, while the breakers probe it, the
  store goes away too (back before the frontier): no probe may stay marked;
- ``frontier-401``: every call refused for the key (401) for a while: documents wait,
  none fails;
- ``frontier-maintenance``: every call answered 200 with a proxy's HTML maintenance page;
- ``poison-outage``: a shorter outage. A share of the input (``POISON_SHARE``) is
  poisoned throughout: the frontier answers its requests 500 every time, so poisoned
  documents are parked with the others in every outage and must not hold them back.

Checks: every document has exactly one final label, and nothing ended
``frontier_failed`` that the frontier did not refuse (only poisoned documents, each
with the reason that it failed alone; the stand-in fails the rest only for a while:
429s, timeouts, outages, a refused key, a maintenance page); no prediction
is stored twice and no document has two successful frontier calls recorded; the
frontier calls billed (the requests the stand-in received) equal those recorded, plus at
most one per frontier process killed; every settled document's result reached the Redis
results stream, read by a consumer throughout (less at most a few entries appended in
the instant before each restart of Redis with nothing, which loses what it held). The
time from the end of the last fault to the last settled document is reported.

    python -m bench.soak --seed 1 [--seeds 1 2 3 4 5] [--docs 5000] [--json]

The fault schedule is printed first; the same seed replays the same schedule. The model
is the tiny random-weight GGUF of ``bench/tiny_model.py`` (delivery is under test, not
accuracy); ``--model`` serves another GGUF.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.results_reader import ResultsReader
from bench.scripted_server import ScriptedServer
from bench.services import RedisServer, free_port
from bench.stack import ROOT, scratch_database, settings_from, start_worker, worker_env
from bench.tcp_proxy import TcpProxy

KINDS = (
    "kill9-slm",
    "kill9-frontier",
    "redis-restart",
    "redis-restart-empty",
    "postgres-cut",
    "warm-shutdown",
    "frontier-outage",
    "postgres-cut-probe",
    "frontier-401",
    "frontier-maintenance",
    "poison-outage",
)
# How long each kind keeps its target away, in seconds (uniform between the bounds).
HOLD_S = {
    "kill9-slm": (0.5, 4.0),
    "kill9-frontier": (0.5, 4.0),
    "redis-restart": (1.0, 6.0),
    "redis-restart-empty": (1.0, 6.0),
    "postgres-cut": (5.0, 20.0),
    "warm-shutdown": (0.0, 0.0),
    "frontier-outage": (120.0, 240.0),
    "postgres-cut-probe": (30.0, 60.0),
    "frontier-401": (20.0, 60.0),
    "frontier-maintenance": (20.0, 60.0),
    "poison-outage": (30.0, 60.0),
}
# Documents whose own request the frontier fails with a 500 every time, outage or not
# (a share of the input, marked): each escalated one must end frontier_failed with the
# reason, and must not hold back the recovery of the documents parked beside it.
POISON_MARK = "[poison] "
POISON_SHARE = 0.01
FRONTIER_PROCESSES = 4
# The least time between one fault's end and the next one's start.
GAP_S = 4.0
# Settings of the workers under test: what an operator who wants quick recovery sets.
WORKER_SETTINGS = {
    # A dead worker's unacknowledged tasks come back after 10 s.
    "SHIFTDOWN_VISIBILITY_TIMEOUT_S": "10",
    "SHIFTDOWN_RESTORE_INTERVAL_S": "2",
    # Documents unchanged for 20 s with no task on the broker are sent again, every 5 s.
    "SHIFTDOWN_RECONCILE_AFTER_S": "20",
    "SHIFTDOWN_RECONCILE_INTERVAL_S": "5",
    "SHIFTDOWN_FRONTIER_TIMEOUT_S": "2",
    "SHIFTDOWN_FRONTIER_RETRY_BASE_S": "0.5",
    "SHIFTDOWN_FRONTIER_TASK_RETRIES": "20",
    # After an outage, the breaker probes and the recovery pass sends what waited soon.
    "SHIFTDOWN_FRONTIER_BREAKER_COOLDOWN_S": "5",
    "SHIFTDOWN_FRONTIER_RECOVER_INTERVAL_S": "5",
    "SHIFTDOWN_N_THREADS": "1",
    "SHIFTDOWN_PARALLEL": "8",
    "SHIFTDOWN_SLM_BATCH_SIZE": "32",
    "OPENAI_API_KEY": "sk-soak-0123456789",
    # Every settled document's result appended to this Redis Stream (a reader checks).
    "SHIFTDOWN_RESULTS_STREAM": "results",
}
# A Redis restarted with nothing loses the results stream's entries it held; a reader
# that keeps up has taken all but those appended in the instant before the kill. At
# most this many a restart may go missing; the outbox covers every other loss.
MISSED_PER_EMPTY_RESTART = 5


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` starts ``at_s`` seconds into the run and keeps its target
    away for ``hold_s``; ``target`` names the worker of a warm shutdown."""

    at_s: float
    kind: str
    hold_s: float
    target: str = ""

    def __str__(self) -> str:
        target = f" ({self.target})" if self.target else ""
        hold = f", away {self.hold_s:.1f} s" if self.hold_s else ""
        return f"t={self.at_s:6.1f} s  {self.kind}{target}{hold}"


def faults_end_s(schedule: list[Fault]) -> float:
    """When the last fault of ``schedule`` ends, run one after another as
    ``Soak.run_faults`` runs them (a warm shutdown counted as a few seconds)."""
    ended = 0.0
    for fault in schedule:
        ended = max(fault.at_s, ended + GAP_S) + max(fault.hold_s, 3.0)
    return ended


def fault_schedule(seed: int, n_faults: int, window_s: float) -> list[Fault]:
    """Every kind at least once, the rest drawn at random, at sorted random times."""
    rng = random.Random(seed)
    kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(max(0, n_faults - len(KINDS)))]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(3.0, window_s) for _ in kinds)
    faults = []
    for at, kind in zip(times, kinds, strict=True):
        low, high = HOLD_S[kind]
        target = rng.choice(["slm", "frontier"]) if kind == "warm-shutdown" else ""
        faults.append(Fault(round(at, 1), kind, round(rng.uniform(low, high), 1), target))
    return faults


@dataclass(frozen=True)
class Injected:
    """A fault as it ran, and what it found: tasks on the broker (queued or delivered
    and unacknowledged) and documents not yet settled."""

    fault: Fault
    started_s: float
    ended_s: float
    tasks_on_broker: int
    unsettled: int

    def __str__(self) -> str:
        return (
            f"{self.fault.kind}{' (' + self.fault.target + ')' if self.fault.target else ''} "
            f"{self.started_s:.1f}-{self.ended_s:.1f} s, found {self.tasks_on_broker} "
            f"documents' tasks on the broker, {self.unsettled} unsettled"
        )


class ChaosFrontier(ScriptedServer):
    """The scripted frontier with a frontier's latency (``latency_s``, uniform) and its
    own seeded faults: a share of requests answered 429 (Retry-After 1 s), and a share
    answered only after the client's timeout."""

    def __init__(
        self,
        label_for: Any,
        seed: int,
        rate_429: float,
        rate_slow: float,
        slow_s: float,
        latency_s: tuple[float, float],
    ) -> None:
        super().__init__(label_for=label_for)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rate_429, self.rate_slow, self.slow_s = rate_429, rate_slow, slow_s
        self.latency_s = latency_s
        self.injected: Counter[str] = Counter()

    def default_answer(
        self, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        with self._lock:
            draw = self._rng.random()
            latency = self._rng.uniform(*self.latency_s)
        if draw < self.rate_429:
            self.injected["429"] += 1
            return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"}
        if draw < self.rate_429 + self.rate_slow:
            self.injected["timeout"] += 1
            latency = self.slow_s  # still billed: the provider did the work
        time.sleep(latency)
        user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        if isinstance(user, str) and user.startswith(POISON_MARK):
            self.injected["poison 500"] += 1
            return (
                500,
                {"error": {"message": "the server had an error processing your request"}},
                {},
            )
        return super().default_answer(body)


@dataclass
class Workers:
    """The SLM and frontier workers, restarted after each fault that stops one."""

    env: dict[str, str]
    log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed_frontier_processes: int = 0
    died_on_their_own: list[str] = field(default_factory=list)

    def died(self) -> list[str]:
        """Workers that have exited though no fault stopped them (each fault starts a
        new one before it ends)."""
        return [role for role, proc in self.procs.items() if proc.poll() is not None]

    def start(self, role: str) -> None:
        """A fresh worker for ``role`` (slm: one process; frontier: several)."""
        processes = 1 if role == "slm" else FRONTIER_PROCESSES
        self.procs[role] = start_worker(
            self.env, processes, queues=role, log=self.log, name=f"{role}-{time.time_ns()}@soak"
        )

    def kill9(self, role: str) -> None:
        """SIGKILL to the worker and its pool processes."""
        proc = self.procs[role]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if role == "frontier":
            self.killed_frontier_processes += FRONTIER_PROCESSES

    def warm_shutdown(self, role: str) -> None:
        """SIGTERM to the main process: Celery finishes the tasks in hand, then exits."""
        proc = self.procs[role]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.kill9(role)  # no longer warm: counted as the kill it becomes

    def stop_all(self) -> None:
        """Warm shutdown of both (a kill for one that lingers)."""
        for role in list(self.procs):
            self.warm_shutdown(role)


@dataclass
class Soak:
    """One soak's moving parts."""

    redis: RedisServer
    proxy: TcpProxy
    workers: Workers
    frontier: ChaosFrontier
    done: list[Injected] = field(default_factory=list)

    def inject(self, fault: Fault) -> None:
        """Apply ``fault`` and undo it after its hold (restart what it stopped)."""
        kind = fault.kind
        if kind.startswith("kill9-"):
            role = kind.removeprefix("kill9-")
            self.workers.kill9(role)
            time.sleep(fault.hold_s)
            self.workers.start(role)
        elif kind.startswith("redis-restart"):
            self.redis.kill()
            if kind == "redis-restart-empty":
                for path in self.redis.folder.glob("appendonly*"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            time.sleep(fault.hold_s)
            self.redis.start()
        elif kind == "postgres-cut":
            self.proxy.cut()
            time.sleep(fault.hold_s)
            self.proxy.restore()
        elif kind == "warm-shutdown":
            self.workers.warm_shutdown(fault.target)
            self.workers.start(fault.target)
        elif kind in ("frontier-outage", "poison-outage"):
            # poison-outage: a shorter outage, so that poisoned documents wait parked
            # among the others and are sent back with them.
            self.frontier.down_until = time.monotonic() + fault.hold_s
            time.sleep(fault.hold_s)
        elif kind == "postgres-cut-probe":
            # The frontier goes down, the breakers open, and while they probe it
            # (cool-down 5 s) the store goes away too; it comes back before the frontier.
            self.frontier.down_until = time.monotonic() + fault.hold_s
            time.sleep(0.3 * fault.hold_s)
            self.proxy.cut()
            time.sleep(0.4 * fault.hold_s)
            self.proxy.restore()
            time.sleep(0.3 * fault.hold_s)
        elif kind == "frontier-401":
            self.frontier.refuse_key_until = time.monotonic() + fault.hold_s
            time.sleep(fault.hold_s)
        elif kind == "frontier-maintenance":
            self.frontier.maintenance_until = time.monotonic() + fault.hold_s
            time.sleep(fault.hold_s)
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def run_faults(self, schedule: list[Fault], t0: float, runs: list[int]) -> None:
        """Each fault at its time, or ``GAP_S`` after the one before ended if that is
        later (so that each finds a working stack); what each found in flight is kept."""
        ended = 0.0
        for fault in schedule:
            time.sleep(max(0.0, t0 + max(fault.at_s, ended + GAP_S) - time.monotonic()))
            started = time.monotonic() - t0
            hit = _in_flight(runs)
            self.inject(fault)
            ended = time.monotonic() - t0
            self.done.append(Injected(fault, round(started, 1), round(ended, 1), **hit))
            print(f"  {self.done[-1]}", file=sys.stderr, flush=True)


def _produce(
    model: Path,
    taxonomy: Path,
    texts: list[str],
    batches: int,
    window_s: float,
    t0: float,
    runs: list[int],
) -> None:
    """Submit ``texts`` as ``batches`` runs spread evenly over the window, adding each
    run's id to ``runs`` once it is submitted."""
    from producers.readers import Record
    from producers.submit import create_run, submit_records
    from shiftdown.taxonomy import Taxonomy

    tax = Taxonomy.from_file(taxonomy)
    size = -(-len(texts) // batches)
    for b in range(batches):
        time.sleep(max(0.0, t0 + b * window_s / batches - time.monotonic()))
        chunk = texts[b * size : (b + 1) * size]
        run_id, queue = create_run("soak", tax, str(model), "soak")
        records = [Record(i + 1, f"{b}-{i}", t) for i, t in enumerate(chunk)]
        submit_records(run_id, records, queue)
        runs.append(run_id)


def _in_flight(run_ids: list[int]) -> dict[str, int]:
    """Documents whose tasks the broker holds, and the runs' unsettled documents."""
    from sqlalchemy import text

    from shiftdown.db import session_scope
    from shiftdown.settings import get_settings
    from workers.broker import in_flight

    s = get_settings()
    with session_scope() as session:
        unsettled = session.scalar(
            text(
                "SELECT count(*) FROM documents WHERE run_id = ANY(:r) "
                "AND state IN ('queued', 'escalated')"
            ),
            {"r": list(run_ids)},
        )
    return {
        "tasks_on_broker": len(in_flight([s.slm_queue, s.frontier_queue])),
        "unsettled": int(unsettled or 0),
    }


def _sweeps(log: Path) -> dict[str, int]:
    """What the workers' reconciliation sweeps sent again, from their log."""
    import re

    sent = {"slm": 0, "frontier": 0, "passes": 0}
    text = log.read_text(errors="replace") if log.exists() else ""
    for slm, frontier in re.findall(
        r"reconciled lost hand-offs: (\d+) to the SLM, (\d+) to the frontier", text
    ):
        sent["slm"] += int(slm)
        sent["frontier"] += int(frontier)
        sent["passes"] += 1
    return sent


def _outbox() -> int:
    """Results still owed to the results stream."""
    from sqlalchemy import func, select

    from shiftdown.db import session_scope
    from shiftdown.schema import ResultOutbox

    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(ResultOutbox)) or 0)


def _state(run_ids: list[int]) -> dict[str, Any]:
    """What the store holds for the soak's runs (one read; direct, not through the proxy)."""
    from sqlalchemy import text

    from shiftdown.db import session_scope

    with session_scope() as s:
        states: dict[Any, int] = dict(
            s.execute(
                text("SELECT state, count(*) FROM documents WHERE run_id = ANY(:r) GROUP BY 1"),
                {"r": run_ids},
            ).all()
        )
        labels = s.execute(
            text(
                "SELECT count(*), count(label), count(DISTINCT document_id) "
                "FROM document_labels WHERE run_id = ANY(:r)"
            ),
            {"r": run_ids},
        ).one()
        stages: dict[Any, int] = dict(
            s.execute(
                text("SELECT stage, count(*) FROM predictions WHERE run_id = ANY(:r) GROUP BY 1"),
                {"r": run_ids},
            ).all()
        )
        calls: dict[Any, int] = dict(
            s.execute(
                text(
                    "SELECT status, count(*) FROM frontier_calls WHERE run_id = ANY(:r) GROUP BY 1"
                ),
                {"r": run_ids},
            ).all()
        )
        final_ids = list(
            s.scalars(
                text(
                    "SELECT id FROM documents WHERE run_id = ANY(:r) "
                    "AND state IN ('classified', 'failed', 'frontier_failed')"
                ),
                {"r": run_ids},
            )
        )
        # Canary calls (no document: workers.frontier._answers_others) answered ok.
        canaries = s.scalar(
            text(
                "SELECT count(*) FROM frontier_calls WHERE run_id = ANY(:r) "
                "AND document_id IS NULL AND status = 'ok'"
            ),
            {"r": run_ids},
        )
        failed = s.execute(
            text(
                "SELECT text, error FROM documents WHERE run_id = ANY(:r) "
                "AND state = 'frontier_failed'"
            ),
            {"r": run_ids},
        ).all()
        twice_ok = s.scalar(
            text(
                "SELECT count(*) FROM (SELECT document_id FROM frontier_calls "
                "WHERE run_id = ANY(:r) AND status = 'ok' AND document_id IS NOT NULL "
                "GROUP BY 1 HAVING count(*) > 1) t"
            ),
            {"r": run_ids},
        )
    return {
        "states": {str(k): v for k, v in states.items()},
        "rows": labels[0],
        "labelled": labels[1],
        "distinct": labels[2],
        "stages": {str(k): v for k, v in stages.items()},
        "calls": {str(k): v for k, v in calls.items()},
        "twice_ok": twice_ok,
        "final_ids": final_ids,
        "failed": [(t, e) for t, e in failed],
        "canaries": int(canaries or 0),
    }


def soak(
    seed: int,
    docs: int = 5_000,
    n_faults: int = 12,
    window_s: float = 150.0,
    batches: int = 20,
    settle_s: float = 480.0,
    model: Path | None = None,
    threshold: float | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run one seeded soak; returns its figures and checks (``ok``: all of them held)."""
    from bench.queries import banking_queries
    from bench.tiny_model import write_tiny_gguf

    schedule = fault_schedule(seed, n_faults, window_s)
    # Documents keep arriving while the faults run one after another (their holds push
    # the last ones well past the window): every fault finds work coming in.
    produce_s = max(window_s, 0.8 * faults_end_s(schedule))
    if verbose:
        print(f"soak seed {seed}: {docs} documents in {batches} runs over {produce_s:.0f} s")
        print(f"fault schedule (python -m bench.soak --seed {seed} replays it):")
        for fault in schedule:
            print(f"  {fault}")
        sys.stdout.flush()
    taxonomy = ROOT / "demo" / "banking77" / "categories.json"
    reference = _reference()
    texts = banking_queries(docs, seed=seed)
    poisoned = random.Random(seed).sample(range(len(texts)), int(POISON_SHARE * len(texts)))
    for i in poisoned:
        texts[i] = POISON_MARK + texts[i]
    folder = Path(tempfile.mkdtemp(prefix="shiftdown-soak-"))
    if model is None:
        model = write_tiny_gguf(folder / "tiny.gguf")
        # Random weights: about a fifth of the documents fall below this.
        threshold = 0.082 if threshold is None else threshold
    frontier = ChaosFrontier(
        lambda text: reference.get(text, "card_arrival"),
        seed,
        rate_429=0.04,
        rate_slow=0.02,
        slow_s=float(WORKER_SETTINGS["SHIFTDOWN_FRONTIER_TIMEOUT_S"]) + 1,
        # A real API's second or so per call, shortened: escalations pile up on the
        # broker and at the frontier workers for most of the window.
        latency_s=(0.2, 1.0),
    ).start()
    redis = RedisServer(folder, free_port(), appendonly=True).start()
    reader = ResultsReader(redis.url(0), WORKER_SETTINGS["SHIFTDOWN_RESULTS_STREAM"])
    try:
        with scratch_database() as (url, pg_port):
            proxy = TcpProxy(("127.0.0.1", pg_port)).start()
            env = {
                **WORKER_SETTINGS,
                "SHIFTDOWN_BROKER_URL": redis.url(0),
                "SHIFTDOWN_DATABASE_URL": url,
                "OPENAI_BASE_URL": frontier.base_url,
            }
            if threshold is not None:
                env["SHIFTDOWN_THRESHOLD"] = str(threshold)
            through_proxy = url.replace(f":{pg_port}/", f":{proxy.port}/")
            workers = Workers(
                worker_env(**{**env, "SHIFTDOWN_DATABASE_URL": through_proxy}),
                folder / "workers.log",
            )
            run = Soak(redis, proxy, workers, frontier)
            with settings_from(worker_env(**env)):
                result = _drive(run, schedule, model, taxonomy, texts, batches, produce_s, settle_s)
            proxy.cut()
    finally:
        reader.stop()
        redis.kill()
        frontier.stop()
    _check_results_stream(result, set(reader.seen))
    result.update(seed=seed, log=str(folder / "workers.log"))
    if result["ok"]:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _drive(
    run: Soak,
    schedule: list[Fault],
    model: Path,
    taxonomy: Path,
    texts: list[str],
    batches: int,
    window_s: float,
    settle_s: float,
) -> dict[str, Any]:
    run.workers.start("slm")
    run.workers.start("frontier")
    try:
        t0 = time.monotonic()
        produced: list[int] = []
        producer = threading.Thread(
            target=_produce,
            args=(model, taxonomy, texts, batches, window_s, t0, produced),
            daemon=True,
        )
        producer.start()
        run.run_faults(schedule, t0, produced)
        faults_end = time.monotonic()
        producer.join(timeout=settle_s)
        state: dict[str, Any] = {}
        while time.monotonic() < faults_end + settle_s and not run.workers.died():
            if not producer.is_alive() and len(produced) < batches:
                break  # the producer failed: what it did not submit will never settle
            state = _state(produced)
            if len(produced) == batches and state["labelled"] + len(state["failed"]) == len(texts):
                break
            time.sleep(1.0)
        settled_at = time.monotonic()
        # The results owed to the stream: appended by now, or soon by a worker's sweep.
        appended_by = settled_at + 30
        while _outbox() and time.monotonic() < appended_by and not run.workers.died():
            time.sleep(1.0)
        died = run.workers.died()
        state = _state(produced)  # the figures, read once more whatever ended the wait
    finally:
        run.workers.stop_all()
    run.workers.died_on_their_own = died
    return _figures(run, texts, produced, batches, state, t0, faults_end, settled_at)


def _figures(
    run: Soak,
    texts: list[str],
    produced: list[int],
    batches: int,
    state: dict[str, Any],
    t0: float,
    faults_end: float,
    settled_at: float,
) -> dict[str, Any]:
    from workers.frontier import FAILED_ALONE

    n = len(texts)
    billed = len(run.frontier.requests)
    recorded = sum(state["calls"].values())
    # A frontier process killed mid-call made a call it could not record; a store cut
    # away is waited out while the call's lease holds (workers/frontier.py).
    killed = run.workers.killed_frontier_processes
    # A poisoned document that failed alone is settled without a label.
    failed_alone = len(state.get("failed", []))
    settled = len(produced) == batches and state["labelled"] + failed_alone == n
    # Polled once a second: the first poll that saw every document settled.
    settle_s = max(0.0, settled_at - faults_end) if settled else None
    checks = {
        "the producer submitted every run": len(produced) == batches,
        "no worker exited on its own": not run.workers.died_on_their_own,
        "every document has exactly one final label": settled
        and state["rows"] == state["distinct"] == n,
        # The frontier refused nothing else: only poisoned documents may fail, each
        # with the reason that the frontier failed it alone.
        "nothing failed that the frontier did not refuse": all(
            t.startswith(POISON_MARK) and (e or "").startswith(FAILED_ALONE)
            for t, e in state.get("failed", [])
        ),
        "no prediction stored twice": state["stages"].get("slm", 0) == n,
        "no document with two successful frontier calls": state["twice_ok"] == 0,
        "frontier predictions = successful calls recorded": state["stages"].get("frontier", 0)
        == state["calls"].get("ok", 0) - state.get("canaries", 0),
        "billed - recorded within [0, frontier processes killed]": 0 <= billed - recorded <= killed,
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "documents": n,
        "runs": len(produced),
        "faults": dict(Counter(i.fault.kind for i in run.done)),
        "fault_log": [{**asdict(i.fault), **asdict(i), "fault": str(i.fault)} for i in run.done],
        "lost": n - state.get("labelled", 0) - failed_alone,
        "final_ids": state.get("final_ids", []),
        "states": state.get("states", {}),
        "poisoned_failed": len(state.get("failed", [])),
        "stages": state.get("stages", {}),
        "calls": state.get("calls", {}),
        "frontier_injected": dict(run.frontier.injected),
        "swept": _sweeps(run.workers.log),
        "billed": billed,
        "recorded": recorded,
        "frontier_processes_killed": killed,
        "faults_end_s": round(faults_end - t0, 1),
        "settle_after_last_fault_s": None if settle_s is None else round(settle_s, 1),
        "wall_s": round(settled_at - t0, 1),
    }


def _check_results_stream(result: dict[str, Any], seen: set[int]) -> None:
    """Add the results stream's figure and check to ``result``."""
    missed = len(set(result.pop("final_ids")) - seen)
    allowed = MISSED_PER_EMPTY_RESTART * result["faults"].get("redis-restart-empty", 0)
    result["results_stream_missed"] = missed
    result["checks"]["every settled document reached the results stream"] = missed <= allowed
    result["ok"] = all(result["checks"].values())


def _reference() -> dict[str, str]:
    import csv

    with (ROOT / "demo" / "banking77" / "test.csv").open(newline="", encoding="utf-8") as f:
        return {r["text"]: r["category"] for r in csv.DictReader(f)}


def print_result(result: dict[str, Any]) -> None:
    """The soak's figures and checks as a table."""
    injected = result["frontier_injected"]
    rows = [
        ("documents", result["documents"]),
        ("runs", result["runs"]),
        ("faults", ", ".join(f"{k} {v}" for k, v in sorted(result["faults"].items()))),
        (
            "frontier's own faults",
            ", ".join(f"{k} {v}" for k, v in injected.items()),
        ),
        ("lost", result["lost"]),
        (
            "re-sent by sweeps",
            "{slm} to the SLM, {frontier} to the frontier, in {passes} passes".format(
                **result["swept"]
            ),
        ),
        ("SLM predictions", result["stages"].get("slm", 0)),
        ("frontier predictions", result["stages"].get("frontier", 0)),
        ("poisoned documents failed alone", result["poisoned_failed"]),
        ("billed / recorded calls", f"{result['billed']} / {result['recorded']}"),
        ("results stream: settled not seen", result["results_stream_missed"]),
        ("frontier processes killed", result["frontier_processes_killed"]),
        ("last fault ended at", f"{result['faults_end_s']} s"),
        ("settled after last fault", f"{result['settle_after_last_fault_s']} s"),
        ("wall", f"{result['wall_s']} s"),
    ]
    rows += [(k, "pass" if v else "FAIL") for k, v in result["checks"].items()]
    width = max(len(k) for k, _ in rows)
    print(f"soak seed {result['seed']}")
    for fault in result["fault_log"]:
        print(
            f"  fault {fault['fault']}: found {fault['tasks_on_broker']} documents' tasks "
            f"on the broker, {fault['unsettled']} unsettled"
        )
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", help="several soaks in a row")
    parser.add_argument("--docs", type=int, default=5_000)
    parser.add_argument("--faults", type=int, default=12)
    parser.add_argument("--window", type=float, default=150.0, help="seconds of faults")
    parser.add_argument("--model", type=Path, help="GGUF to serve (default: the tiny model)")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Killed from outside (a CI timeout, kill), the soak still stops its workers and
    # servers on the way out: SIGTERM unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    for seed in args.seeds or [args.seed]:
        result = soak(
            seed, args.docs, args.faults, args.window, model=args.model, threshold=args.threshold
        )
        results.append(result)
        if not args.json:
            print_result(result)
    if args.json:
        print(json.dumps(results, default=str, indent=2))
    if not all(r["ok"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
