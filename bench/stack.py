"""What the benchmarks that need the full stack share: a scratch Postgres database, a
flushed Redis database, this process's settings pointed at both, and Celery worker
processes started against them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("SHIFTDOWN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Not the tests' database (15): a benchmark may run beside a test suite's Redis use.
BROKER = os.environ.get("SHIFTDOWN_BENCH_REDIS", "redis://127.0.0.1:6379/14")
# The pid of the benchmark using BROKER (flushed with it when that benchmark ends).
LOCK = "shiftdown:bench:pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


@contextmanager
def scratch_stack(**settings: str) -> Iterator[dict[str, str]]:
    """A fresh Postgres database (migrated) and Redis database for one benchmark; yields
    the environment a worker process needs. This process's settings follow it."""
    import psycopg
    import redis

    client = redis.Redis.from_url(BROKER)
    holder = client.get(LOCK)
    if holder is not None and _alive(int(holder)):
        # Flushing under a running benchmark empties its queue: it would wait forever.
        raise SystemExit(
            f"benchmark process {int(holder)} is using {BROKER}: wait for it, or set "
            "SHIFTDOWN_BENCH_REDIS to another Redis database"
        )
    name = f"shiftdown_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    client.flushdb()
    client.set(LOCK, os.getpid())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTDOWN_", "OPENAI_"))}
    env.update(SHIFTDOWN_DATABASE_URL=url, SHIFTDOWN_BROKER_URL=BROKER, **settings)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)

    import migrations
    from shiftdown.db import dispose_engines
    from shiftdown.settings import get_settings
    from workers.app import configure

    get_settings.cache_clear()
    configure()
    migrations.upgrade(url)
    try:
        yield env
    finally:
        dispose_engines()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        configure()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(BROKER).flushdb()


def start_worker(
    env: dict[str, str],
    processes: int = 1,
    queues: str = "slm",
    log: Path | None = None,
    pool: str = "prefork",
) -> subprocess.Popen[bytes]:
    """A Celery worker of ``workers.app`` with ``processes`` pool processes (threads,
    with ``pool="threads"``)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues,
         "-P", pool, "-c", str(processes), "--without-gossip", "--without-mingle",
         "-l", "info"],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then kill if it lingers."""
    worker.terminate()
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=10)
