"""The frontier worker against a real OpenAI-compatible server: llama-cpp-python's own
``llama_cpp.server``, which rejects the json_schema response format."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from models.base import default_gguf_path
from shiftdown.db import session_scope
from shiftdown.schema import DocState, Document, FrontierCall
from tests.helpers import free_port


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_gguf_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--logits_all",
            "true",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/models", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
def test_escalation_to_a_real_openai_compatible_server(
    use_settings: Callable[..., None],
    sqlite_url: str,
    llama_server: str,
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="1.0",
        OPENAI_BASE_URL=llama_server,
        SHIFTDOWN_FRONTIER_MODEL="smollm2-local",
        SHIFTDOWN_FRONTIER_PRICE_MODEL="gpt-4o-mini",
    )
    path = write_jsonl(
        [{"text": "My card still has not arrived"}, {"text": "What is the exchange rate?"}]
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output
    with session_scope() as s:
        docs = list(s.scalars(select(Document)))
        calls = list(s.scalars(select(FrontierCall)))
    assert [d.state for d in docs] == [DocState.CLASSIFIED] * 2
    assert all(d.final_stage == "frontier" for d in docs)
    ok = [c for c in calls if c.status == "ok"]
    assert len(ok) == 2
    assert all(c.response_format == "json_object" for c in ok)
    assert all(c.prompt_tokens > 50 and c.completion_tokens > 0 for c in ok)
    assert all(c.cost_usd and c.cost_usd > 0 for c in ok)


@pytest.mark.slow
def test_a_narrowed_request_to_a_real_openai_compatible_server(
    use_settings: Callable[..., None],
    sqlite_url: str,
    llama_server: str,
    banking_taxonomy: Path,
    write_jsonl: Callable[..., Path],
) -> None:
    # The SLM's top five and "none of these", as a json_object schema llama.cpp enforces.
    use_settings(
        SHIFTDOWN_DATABASE_URL=sqlite_url,
        SHIFTDOWN_THRESHOLD="1.0",
        SHIFTDOWN_FRONTIER_TOP_K="5",
        OPENAI_BASE_URL=llama_server,
        SHIFTDOWN_FRONTIER_MODEL="smollm2-local",
        SHIFTDOWN_FRONTIER_PRICE_MODEL="gpt-4o-mini",
    )
    path = write_jsonl(
        [{"text": "My card still has not arrived"}, {"text": "What is the exchange rate?"}]
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output
    with session_scope() as s:
        docs = list(s.scalars(select(Document)))
        calls = list(s.scalars(select(FrontierCall).order_by(FrontierCall.id)))
    assert [d.state for d in docs] == [DocState.CLASSIFIED] * 2
    for doc in docs:
        mine = [(c.offered, c.status) for c in calls if c.document_id == doc.id]
        # Its narrowed answer, or "none of these" and then the whole taxonomy.
        assert mine in ([(5, "ok")], [(5, "ok"), (None, "ok")]), mine
    assert all(c.response_format == "json_object" and c.prompt_tokens > 20 for c in calls)
