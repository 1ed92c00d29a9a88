"""A small OpenAI-compatible HTTP server on loopback whose answers the test scripts.

It stands in for the paid frontier API: real HTTP, real JSON, real status codes and
headers, so the openai client and the frontier worker run unchanged against it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from bench.batch_api import BatchApi
from shiftdown.prompts import NONE_OF_THESE


class _Httpd(ThreadingHTTPServer):
    # The default listen backlog of 5 drops SYNs under dozens of concurrent connects; the
    # kernel retries a second later, which a benchmark would read as frontier latency.
    request_queue_size = 256


MAINTENANCE_PAGE = "<html><body><h1>Down for maintenance</h1>Back soon.</body></html>"
INVALID_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
}

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any] | str, dict[str, str]]]


@dataclass
class ScriptedServer:
    """Answers chat completions with ``label_for(user_text)`` unless ``script`` overrides."""

    label_for: Callable[[str], str]
    prompt_tokens: int = 120
    completion_tokens: int = 7
    # A tokenizer's count of a text: usage then holds the tokens of the real request
    # (every message) and answer, as a provider bills them, not the fixed counts above.
    count_tokens: Callable[[str], int] | None = None
    reject_json_schema: bool = False
    # Prompt tokens reported as served from the cache (usage.prompt_tokens_details).
    cached_tokens: int = 0
    # A synchronous call's least time on the server, answering included (a remote
    # model's latency); Batch API lines are answered without it.
    delay_s: float = 0.0
    # HTTP/1.1 keep-alive, as the openai client's connection pool expects of a real API.
    # Off by default: a kept connection holds a handler thread that ``stop`` waits for.
    keep_alive: bool = False
    script: list[Answer] = field(default_factory=list)
    # An outage: chat completions received before this time.monotonic() are answered
    # 503, as a provider that is down answers them.
    down_until: float = 0.0
    # A proxy's maintenance page: chat completions received before this time are
    # answered 200 with an HTML page instead of a completion.
    maintenance_until: float = 0.0
    # A revoked key: chat completions received before this time are answered 401.
    refuse_key_until: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    batch: BatchApi | None = None
    _httpd: _Httpd | None = None

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = BatchApi(answer=self.default_answer)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def default_answer(
        self, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        fmt = body.get("response_format") or {}
        if self.reject_json_schema and fmt.get("type") == "json_schema":
            return (
                422,
                {"error": {"message": "response_format.type: json_schema is not supported"}},
                {},
            )
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        label = self.label_for(user)
        offered = offered_labels(body)
        if offered is not None and label not in offered and NONE_OF_THESE in offered:
            label = NONE_OF_THESE  # a narrowed request without the right label
        content = json.dumps({"label": label})
        answer = completion(body["model"], content, *self.usage(body, content))
        if self.cached_tokens:
            answer["usage"]["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return 200, answer, {}

    def usage(self, body: dict[str, Any], content: str) -> tuple[int, int]:
        """Prompt and completion tokens of answering ``body`` with ``content``."""
        if self.count_tokens is None:
            return self.prompt_tokens, self.completion_tokens
        messages = body.get("messages", [])
        prompt = sum(self.count_tokens(message_text(m.get("content"))) for m in messages)
        return prompt, self.count_tokens(content)

    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api = server.batch
                assert api is not None
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/content"):
                    file_id = path.split("/")[-2]
                    self._send(200, api.files[file_id], {}, "application/jsonl")
                elif path.endswith("/batches"):
                    self._send(200, api.listing(), {})
                else:
                    self._send(200, api.retrieve(path.split("/")[-1]), {})

            def do_POST(self) -> None:
                received = time.perf_counter()
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                api = server.batch
                assert api is not None
                if self.path.rstrip("/").endswith("/files"):
                    self._send(200, api.upload(self.headers["Content-Type"], raw), {})
                    return
                body = json.loads(raw)
                if self.path.rstrip("/").endswith("/batches"):
                    self._send(200, api.create(body), {})
                    return
                server.requests.append(body)
                now = time.monotonic()
                if now < server.down_until:
                    self._send(503, {"error": {"message": "service unavailable"}}, {})
                    return
                if now < server.maintenance_until:
                    self._send(200, MAINTENANCE_PAGE, {}, "text/html")
                    return
                if now < server.refuse_key_until:
                    self._send(401, INVALID_KEY, {})
                    return
                answer = server.script.pop(0) if server.script else server.default_answer
                status, payload, headers = answer(body)
                time.sleep(max(0.0, server.delay_s - (time.perf_counter() - received)))
                self._send(status, payload, headers)

            def _send(
                self,
                status: int,
                payload: Any,
                headers: dict[str, str],
                content_type: str = "application/json",
            ) -> None:
                if isinstance(payload, bytes):
                    data = payload
                elif isinstance(payload, str):
                    data = payload.encode()
                else:
                    data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                # The client may have given up first (its timeout), as a real API sees too.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        self._httpd = _Httpd(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def offered_labels(body: dict[str, Any]) -> list[str] | None:
    """The labels a request's answer schema admits (its structured-output enum)."""
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    enum = ((schema.get("properties") or {}).get("label") or {}).get("enum")
    return list(enum) if isinstance(enum, list) else None


def message_text(content: Any) -> str:
    """A chat message's content as text (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def completion(
    model: str, content: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A chat.completion body with usage."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
