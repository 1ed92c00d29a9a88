"""What the benchmarks that need the full stack share: a scratch Postgres database, a
flushed Redis database, this process's settings pointed at both, and Celery worker
processes started against them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

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
def scratch_database() -> Iterator[tuple[str, int]]:
    """A fresh Postgres database on the server of ``SHIFTDOWN_TEST_PG``, migrated;
    yields its SQLAlchemy URL and the server's port, and drops it at the end."""
    import psycopg

    import migrations
    from shiftdown.db import dispose_engines

    name = f"shiftdown_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        migrations.upgrade(url)
        yield url, urlsplit(PG_ADMIN).port or 5432
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def settings_from(env: dict[str, str]) -> Iterator[None]:
    """This process's environment replaced by ``env`` (its settings, Celery app and
    engines following), and put back at the end."""
    from shiftdown.db import dispose_engines
    from shiftdown.settings import get_settings
    from workers.app import configure

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()
    configure()
    try:
        yield
    finally:
        dispose_engines()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        configure()


def worker_env(**settings: str) -> dict[str, str]:
    """This process's environment without its shiftdown settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTDOWN_", "OPENAI_"))}
    return {**env, **settings}


@contextmanager
def scratch_stack(**settings: str) -> Iterator[dict[str, str]]:
    """A fresh Postgres database (migrated) and Redis database for one benchmark; yields
    the environment a worker process needs. This process's settings follow it."""
    import redis

    client = redis.Redis.from_url(BROKER)
    holder = client.get(LOCK)
    if holder is not None and _alive(int(holder)):
        # Flushing under a running benchmark empties its queue: it would wait forever.
        raise SystemExit(
            f"benchmark process {int(holder)} is using {BROKER}: wait for it, or set "
            "SHIFTDOWN_BENCH_REDIS to another Redis database"
        )
    with scratch_database() as (url, _):
        client.flushdb()
        client.set(LOCK, os.getpid())
        env = worker_env(SHIFTDOWN_DATABASE_URL=url, SHIFTDOWN_BROKER_URL=BROKER, **settings)
        try:
            with settings_from(env):
                yield env
        finally:
            redis.Redis.from_url(BROKER).flushdb()


def start_worker(
    env: dict[str, str],
    processes: int = 1,
    queues: str = "slm",
    log: Path | None = None,
    pool: str = "prefork",
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """A Celery worker of ``workers.app`` with ``processes`` pool processes (threads,
    with ``pool="threads"``), in a session of its own (so that a signal to its process
    group reaches its pool processes too)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues,
         "-P", pool, "-c", str(processes), "--without-gossip", "--without-mingle",
         "-l", "info", *(["-n", name] if name else [])],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then kill it and its pool processes if it lingers."""
    worker.terminate()
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
