"""docker-compose.yml stays valid and in step with the local commands (no engine here:
Debian's docker-compose validates and renders the file without one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shiftdown.settings import SERVE_TYPES

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed"
)


def _config(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHIFTDOWN_", "OPENAI_", "FLOWER_"))
    }
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_and_wires_the_stack() -> None:
    result = _config(FLOWER_PASSWORD="secret", OPENAI_API_KEY="sk-x")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {
        "redis",
        "postgres",
        "migrate",
        "slm-worker",
        "slm-worker-gpu",
        "frontier-worker",
        "flower",
    } <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["migrate"]["command"] == ["shiftdown", "db", "upgrade"]
    for name, queue in [
        ("slm-worker", "slm"),
        ("slm-worker-gpu", "slm"),
        ("frontier-worker", "frontier"),
    ]:
        cmd = services[name]["command"]
        assert cmd[:3] == ["celery", "-A", "workers.app"] and cmd[cmd.index("-Q") + 1] == queue
        env = services[name]["environment"]
        assert env["SHIFTDOWN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["SHIFTDOWN_BROKER_URL"] == "redis://redis:6379/0"
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    for name in ("slm-worker", "slm-worker-gpu"):
        # Every SLM worker serves the same merged form, from one cache they share.
        env = services[name]["environment"]
        assert env["SHIFTDOWN_SERVE_TYPE"] in SERVE_TYPES
        # docker-compose v1 writes "source:target:mode", v2 a mapping.
        targets = {
            v["target"] if isinstance(v, dict) else v.split(":")[1]
            for v in services[name]["volumes"]
        }
        assert env["XDG_CACHE_HOME"] in targets
    gpu = services["slm-worker-gpu"]
    assert gpu["environment"]["SHIFTDOWN_N_GPU_LAYERS"] == "-1"
    # One model, several tasks in flight sharing its decodes; within llama.cpp's limit.
    assert gpu["command"][gpu["command"].index("--pool") + 1] == "threads"
    assert 1 < int(gpu["environment"]["SHIFTDOWN_PARALLEL"]) <= 255
    assert int(gpu["environment"]["SHIFTDOWN_SLM_BATCH_SIZE"]) >= 64
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["flower"]["command"][:2] == ["shiftdown", "flower"]
    assert services["flower"]["environment"]["SHIFTDOWN_FLOWER_PASSWORD"] == "secret"


def test_flower_refuses_to_start_without_a_password() -> None:
    result = _config()
    assert result.returncode != 0 and "FLOWER_PASSWORD" in result.stderr
