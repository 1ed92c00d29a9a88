from __future__ import annotations

import io

from producers.readers import Record, Rejected, read_records


def _read(data: bytes, fmt: str = "auto", name: str = "-", **kw: str) -> list[Record | Rejected]:
    return list(read_records(io.BytesIO(data), fmt, name, **kw))  # type: ignore[arg-type]


def test_jsonl_good_and_malformed_lines_keep_line_numbers() -> None:
    data = (
        b'{"id": "a", "text": "first"}\n'
        b"{not json\n"
        b"\n"
        b'{"id": "b", "text": 42}\n'
        b'{"id": "c"}\n'
        b'{"id": "d", "text": "   "}\n'
        b'{"id": "e", "text": "bad \xff byte"}\n'
        b"[1, 2]\n"
        b'{"text": "no id"}\n'
    )
    out = _read(data, name="x.jsonl")
    good = [r for r in out if isinstance(r, Record)]
    bad = {r.line_no: r.error for r in out if isinstance(r, Rejected)}
    assert [(r.line_no, r.external_id, r.text) for r in good] == [
        (1, "a", "first"),
        (9, "9", "no id"),
    ]
    assert "invalid JSON" in bad[2]
    assert "must be text, got int" in bad[4]
    assert "missing field 'text'" in bad[5]
    assert "empty" in bad[6]
    assert "not valid UTF-8" in bad[7]
    assert "expected a JSON object" in bad[8]
    assert all(msg.startswith(f"line {n}:") for n, msg in bad.items())


def test_custom_fields_and_stdin_sniffing() -> None:
    out = _read(b'{"body": "hello", "key": 7}\n', text_field="body", id_field="key")
    assert out == [Record(1, "7", "hello")]


def test_csv_with_quoted_newlines_and_missing_column() -> None:
    data = b'text,category\n"multi\nline",a\nsingle,b\n'
    out = _read(data, name="x.csv")
    assert [(r.line_no, r.text) for r in out if isinstance(r, Record)] == [
        (2, "multi\nline"),
        (4, "single"),
    ]
    missing = _read(data, name="x.csv", text_field="body")
    assert isinstance(missing[0], Rejected) and "no column 'body'" in missing[0].error


def test_plain_text_one_document_per_line() -> None:
    out = _read(b"one\n\ntwo\r\n", name="x.txt")
    assert [(r.line_no, r.text) for r in out if isinstance(r, Record)] == [(1, "one"), (3, "two")]
