"""The Batch API of the loopback stand-in frontier (``bench/scripted_server.py``): files
uploaded, batches created, polled, listed, and their output and error files read, as
the openai client does against OpenAI.

A batch's lines are answered when it is created, through the stand-in's own chat
answer (so narrowed requests, scripted faults and token counts behave as for a
synchronous call); it reports ``in_progress`` for ``polls_until_done`` retrievals,
then ``completed``, or ``expired`` with the lines ``expire`` picks left unanswered.
Lines whose ``line_fault`` returns a status fail with it, into the error file.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any

ChatAnswer = Callable[[dict[str, Any]], tuple[int, dict[str, Any] | str, dict[str, str]]]


@dataclass
class BatchApi:
    """Files and batches kept in memory."""

    answer: ChatAnswer
    polls_until_done: int = 1
    line_fault: Callable[[dict[str, Any]], int | None] = lambda _line: None
    expire: Callable[[dict[str, Any]], bool] = lambda _line: False
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every line answered with a completion: what the provider bills.
    billed: list[dict[str, Any]] = field(default_factory=list)
    created: int = 0
    _polls: dict[str, int] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        """POST /files (multipart/form-data: purpose, file)."""
        message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        data = b""
        for part in message.walk():
            if part.get_param("name", header="content-disposition") == "file":
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = data
        return _file(file_id, len(data), "batch")

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST /batches: every line answered now, released on later polls."""
        lines = [json.loads(x) for x in self.files[request["input_file_id"]].splitlines() if x]
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        expired = False
        for line in lines:
            if self.expire(line):
                expired = True
                continue
            fault = self.line_fault(line)
            if fault:
                errors.append(_line(line["custom_id"], fault, {"error": {"message": "fault"}}))
                continue
            status, payload, _ = self.answer(line["body"])
            if status == 200 and isinstance(payload, dict):
                self.billed.append(line)
            errors_or_output = output if status == 200 else errors
            errors_or_output.append(_line(line["custom_id"], status, payload))
        with self._lock:
            self.created += 1
            batch_id = f"batch_{next(self._ids)}"
            out_id = self._store(output)
            err_id = self._store(errors)
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": request["endpoint"],
                "errors": None,
                "input_file_id": request["input_file_id"],
                "completion_window": request["completion_window"],
                "status": "in_progress",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": request.get("metadata") or {},
                "request_counts": {
                    "total": len(lines),
                    "completed": len(output),
                    "failed": len(errors),
                },
                "_final": ("expired" if expired else "completed", out_id, err_id),
            }
            self._polls[batch_id] = 0
        return self._public(batch_id)

    def _store(self, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        return file_id

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """GET /batches/{id}: in progress for ``polls_until_done`` polls, then ended."""
        with self._lock:
            self._polls[batch_id] += 1
            batch = self.batches[batch_id]
            if self._polls[batch_id] > self.polls_until_done and batch["status"] == "in_progress":
                status, out_id, err_id = batch["_final"]
                batch.update(status=status, output_file_id=out_id, error_file_id=err_id)
        return self._public(batch_id)

    def listing(self) -> dict[str, Any]:
        """GET /batches."""
        data = [self._public(b) for b in reversed(list(self.batches))]
        return {"object": "list", "data": data, "has_more": False}

    def _public(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}


def _file(file_id: str, size: int, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": f"{file_id}.jsonl",
        "purpose": purpose,
        "status": "processed",
    }


def _line(custom_id: str, status: int, body: Any) -> dict[str, Any]:
    return {
        "id": f"line-{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": custom_id, "body": body},
        "error": None if status == 200 else {"code": str(status), "message": "failed"},
    }
