"""One test's full stack (``stack`` fixture): settings applied, the scripted frontier,
BANKING77 queries written as input, Celery workers started with a shared log, and
waits on the store."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.scripted_server import ScriptedServer
from tests.helpers import celery_worker, settle, slm_done, submit


@dataclass
class Stack:
    """What a fault test drives: ``use`` the settings, ``submit`` queries, start a
    ``worker``, ``wait_for`` a share of the run, ``settle`` it."""

    env: dict[str, str]
    scripted: ScriptedServer
    banking: list[dict[str, str]]
    taxonomy: Path
    folder: Path
    apply: Callable[..., None]

    @property
    def log(self) -> Path:
        """The log every worker of this test appends to."""
        return self.folder / "worker.log"

    def use(self, **overrides: str) -> dict[str, str]:
        """Apply the stack's settings with ``overrides`` here; returns them for workers."""
        env = {**self.env, **overrides}
        self.apply(**env)
        return env

    def submit(self, n: int, prefix: str) -> int:
        """Submit ``n`` BANKING77 queries (cycled, ids ``prefix0``…); returns the run id."""
        path = self.folder / f"{prefix}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(n):
                text = self.banking[i % len(self.banking)]["text"]
                f.write(json.dumps({"id": f"{prefix}{i}", "text": text}) + "\n")
        return submit(path, self.taxonomy)

    def worker(self, env: dict[str, str], processes: int = 1) -> subprocess.Popen[bytes]:
        """A Celery worker on both queues with ``processes`` pool processes."""
        log = self.log.open("ab")
        return celery_worker("slm,frontier", env, log, "-c", str(processes), "-l", "info")

    @staticmethod
    def wait_for(run_id: int, share: float, n: int) -> int:
        """Block until ``share`` of the run's ``n`` documents have their SLM prediction."""
        deadline = time.monotonic() + 180
        while (done := slm_done(run_id)) < share * n and time.monotonic() < deadline:
            time.sleep(0.1)
        return done

    def settle(self, run_id: int, timeout_s: int = 240) -> None:
        """Wait for every document of the run; the worker log on failure."""
        settle(run_id, self.log, timeout_s)
