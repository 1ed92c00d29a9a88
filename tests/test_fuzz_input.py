"""Bad input, generated: over a thousand seeded records of every
kind of wrong, mixed with valid ones, through the real producer, llama.cpp and
Postgres. Each bad record gets a recorded error naming its line; every valid record is
processed; nothing crashes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from shiftdown.db import session_scope
from shiftdown.schema import Document, InputError

RECORDS = 1200
HUGE = "lost card " * 100_000  # 1 MB, far past the model's context


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def bad_record(rng: random.Random) -> tuple[bytes, str]:
    """One malformed line and a fragment its error message must contain."""
    kind = rng.randrange(14)
    wrong_text = rng.choice([42, 1.5, True, ["a"], {"a": 1}])
    wrong_id = rng.choice([1.5, ["x"], True, "x" * 300])
    garbage = b"\x00\xff" + bytes(rng.randrange(256) for _ in range(80)).replace(b"\n", b"")
    cases: list[tuple[bytes, str]] = [
        (js({"text": ""}), "text is empty"),
        (js({"text": " \t \u3000 "}), "text is empty"),
        (garbage, "invalid JSON"),
        (b'{"text": "caf\xc3\x28 ' + bytes([rng.randrange(0x80, 0x100)]) + b'"}', "UTF-8"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b'{"text": "trailing comma",}', "invalid JSON"),
        (js(["text", "a list"]), "expected a JSON object"),
        (js({"body": "no text field"}), "missing field 'text'"),
        (js({"text": wrong_text}), "must be text"),
        (js({"text": None}), "missing field 'text'"),
        (js({"text": "nul\u0000inside"}), "NUL"),
        (b'{"text": "lone \\ud800 surrogate"}', "UTF-8"),
        (js({"text": "ok", "id": wrong_id}), "id must"),
        (js({"text": "ok", "id": "nul\u0000id"}), "id must"),
    ]
    return cases[kind]


def generate(banking: list[dict[str, str]], seed: int = 7) -> tuple[bytes, dict[int, str]]:
    """The file, and the expected error fragment of every bad line (by line number)."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    bad: dict[int, str] = {}
    seen_ids: list[str] = []
    for i in range(RECORDS):
        line_no = len(lines) + 1
        roll = rng.random()
        if roll < 0.12:
            ext = f"doc-{i}"
            text = rng.choice(
                [
                    banking[i % len(banking)]["text"],
                    "'; DROP TABLE documents; -- my card is lost",
                    "Überweisung 💳 ‏עברית control\u0007chars",
                ]
            )
            seen_ids.append(ext)
            lines.append(json.dumps({"id": ext, "text": text}).encode())
        elif roll < 0.15 and seen_ids:
            lines.append(json.dumps({"id": rng.choice(seen_ids), "text": "again"}).encode())
            bad[line_no] = "duplicate id"
        else:
            line, fragment = bad_record(rng)
            lines.append(line)
            bad[line_no] = fragment
    for n in range(3):  # 1 MB documents: truncated by the documented rule, then classified
        lines.append(json.dumps({"id": f"huge-{n}", "text": HUGE}).encode())
    return b"\n".join(lines) + b"\n", bad


def test_a_thousand_bad_records_are_each_answered_and_nothing_crashes(
    use_settings: Callable[..., None],
    pg_url: str,
    banking: list[dict[str, str]],
    banking_taxonomy: Path,
    tmp_path: Path,
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=pg_url, SHIFTDOWN_N_THREADS="2")
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    data, bad = generate(banking)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    total = data.count(b"\n")
    assert total >= 1000 and len(bad) > 900

    result = CliRunner().invoke(cli, ["run", str(path), "--taxonomy", str(banking_taxonomy)])
    assert result.exit_code == 0, result.output

    with session_scope() as s:
        errors = {e.line_no: e.error for e in s.scalars(select(InputError))}
        docs = s.scalars(select(Document)).all()
        states = {d.external_id: (d.state, d.truncated) for d in docs}
    # Every bad line has exactly one recorded error that names its line and its fault.
    assert set(errors) == set(bad), set(errors) ^ set(bad)
    for line_no, fragment in bad.items():
        assert errors[line_no].startswith(f"line {line_no}: "), errors[line_no]
        assert fragment in errors[line_no], (line_no, errors[line_no])
    # Every valid record was stored and processed to a settled state, none failed.
    assert len(docs) == total - len(bad)
    assert {state for state, _ in states.values()} <= {"classified", "awaiting_frontier"}
    assert all(states[f"huge-{n}"][1] for n in range(3))  # truncation recorded
    assert not any(truncated for ext, (_, truncated) in states.items() if ext.startswith("doc"))
    print(f"fuzz: {total} records, {len(bad)} rejected with a clear error, {len(docs)} processed")
