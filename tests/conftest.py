"""Shared fixtures: real SQLite/Postgres stores, real Redis, settings switched per test,
and data slices of BANKING77 (the demo copy under demo/banking77)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import migrations
from bench.scripted_server import ScriptedServer
from bench.services import Ensured, ensure_services
from shiftdown.db import dispose_engines
from shiftdown.settings import get_settings
from tests.stack import Stack
from workers import frontier, slm
from workers.app import configure

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "banking77"
PG_ADMIN = os.environ.get("SHIFTDOWN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# The tests flush this Redis database: two suites must not run against it at once.
REDIS_URL = os.environ.get("SHIFTDOWN_TEST_REDIS", "redis://127.0.0.1:6379/15")
_services: Ensured | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Where the configured Postgres or Redis does not answer (a newcomer's machine),
    throwaway ones on free loopback ports, from the system's packages or the wheels the
    dev extra installs; stopped at the end. Subprocesses (workers, benchmarks) find them
    through the same variables."""
    global PG_ADMIN, REDIS_URL, _services
    _services = ensure_services(PG_ADMIN, REDIS_URL)
    PG_ADMIN, REDIS_URL = _services.pg_url, _services.redis_url
    os.environ["SHIFTDOWN_TEST_PG"] = PG_ADMIN
    os.environ["SHIFTDOWN_TEST_REDIS"] = REDIS_URL
    if _services.started:
        # The benchmarks' database on the same server (bench/stack.py).
        os.environ["SHIFTDOWN_BENCH_REDIS"] = REDIS_URL.rsplit("/", 1)[0] + "/14"
        names = ", ".join(type(s).__name__ for s in _services.started)
        config.stash[_STARTED] = f"started {names} for this run: {PG_ADMIN}, {REDIS_URL}"


def pytest_report_header(config: pytest.Config) -> str | None:
    return config.stash.get(_STARTED, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _services is not None:
        _services.stop()


_STARTED = pytest.StashKey[str]()

SETTING_VARS = [
    k for k in os.environ if k.startswith("SHIFTDOWN_") and not k.startswith("SHIFTDOWN_TEST_")
] + ["OPENAI_API_KEY", "OPENAI_BASE_URL"]


@pytest.fixture(scope="session")
def banking() -> list[dict[str, str]]:
    """BANKING77 test queries (text, category), spread over the labels."""
    with (DEMO / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows[::7]


@pytest.fixture(scope="session")
def banking_taxonomy() -> Path:
    return DEMO / "categories.json"


@pytest.fixture(scope="session")
def reference(banking: list[dict[str, str]]) -> dict[str, str]:
    """Reference label of every BANKING77 test text."""
    with (DEMO / "test.csv").open(newline="", encoding="utf-8") as f:
        return {r["text"]: r["category"] for r in csv.DictReader(f)}


def apply_settings(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> None:
    """Switch settings for this test: environment, caches, Celery app, engines."""
    for key in SETTING_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    configure()
    dispose_engines()
    frontier.reset_client()
    slm.unload_models()


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    yield lambda **env: apply_settings(monkeypatch, **env)
    monkeypatch.undo()
    get_settings.cache_clear()
    configure()
    dispose_engines()
    frontier.reset_client()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrations.upgrade(url)
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"shiftdown_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    yield url
    dispose_engines()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def scripted(reference: dict[str, str]) -> Iterator[ScriptedServer]:
    """An OpenAI-compatible server answering with the reference label."""
    server = ScriptedServer(label_for=lambda text: reference.get(text, "card_arrival")).start()
    yield server
    server.stop()


@pytest.fixture
def stack_env(pg_url: str, redis_url: str, scripted: ScriptedServer) -> dict[str, str]:
    """Settings of the full stack: Postgres, Redis and the scripted frontier."""
    return {
        "SHIFTDOWN_DATABASE_URL": pg_url,
        "SHIFTDOWN_BROKER_URL": redis_url,
        "SHIFTDOWN_THRESHOLD": "0.5",
        # Two cores: one worker process with both threads.
        "SHIFTDOWN_N_THREADS": "2",
        # Documents of a task decoded eight at a time: the GPU path, and 9 % faster here.
        "SHIFTDOWN_PARALLEL": "8",
        # A call cut off by a killed worker leaves a lease that runs out in 35 s.
        "SHIFTDOWN_FRONTIER_TIMEOUT_S": "5",
        "OPENAI_BASE_URL": scripted.base_url,
        "OPENAI_API_KEY": "sk-test-stack-0123456789",
    }


@pytest.fixture
def stack(
    use_settings: Callable[..., None],
    stack_env: dict[str, str],
    scripted: ScriptedServer,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    tmp_path: Path,
) -> Stack:
    """The full stack for one test, driven through ``tests.stack.Stack``."""
    return Stack(stack_env, scripted, banking, banking_taxonomy, tmp_path, use_settings)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[list[Any], str], Path]:
    def write(items: list[Any], name: str = "docs.jsonl") -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as f:
            for item in items:
                f.write(item if isinstance(item, str) else json.dumps(item))
                f.write("\n")
        return path

    return write


LABELS = ["card_arrival", "exchange_rate", "pin_blocked", "age_limit"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 4-label slice of BANKING77 learned by `shiftdown finetune` (LoRA, CPU, ~1 min)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from click.testing import CliRunner

    from cli.main import cli
    from models.training.finetune import stratified_split

    with (DEMO / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in LABELS]
    train, held_out = stratified_split(rows, 0.4, seed=1)
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "labels.json").write_text(json.dumps(LABELS))
    with (folder / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(train)
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--data",
            str(folder / "train.csv"),
            "--taxonomy",
            str(folder / "labels.json"),
            "--label-column",
            "category",
            "--out",
            str(folder / "model"),
            "--valid-frac",
            "0",
            "--epochs",
            "4",
            "--lr",
            "2e-3",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    return {
        "dir": folder / "model",
        "held_out": held_out,
        "taxonomy": folder / "labels.json",
        "train": train,
    }


def python_bin() -> str:
    import sys

    return sys.executable


def run_cli(
    *args: str, env: dict[str, str], input_data: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The installed ``shiftdown`` command in a subprocess."""
    return subprocess.run(
        [python_bin(), "-m", "cli", *args],
        env=env,
        input=input_data,
        capture_output=True,
        timeout=300,
    )
