"""Streaming readers for JSONL, CSV and plain text: one record at a time, never the
whole file, each good record or rejection carrying its line number.

Bytes are decoded line by line with ``surrogateescape`` so that one invalid UTF-8 line
is rejected on its own instead of ending the stream.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast

Format = Literal["auto", "jsonl", "csv", "text"]


@dataclass(frozen=True)
class Record:
    """A valid document: its id (given, or the line number) and text."""

    line_no: int
    external_id: str
    text: str
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rejected:
    """An input record that cannot be a document, and why."""

    line_no: int
    error: str
    excerpt: str


# Undecodable bytes (surrogateescape) and lone surrogates from JSON "\ud800" escapes
# alike: neither can be stored as UTF-8. A regex scans in C; a per-character generator
# was a sixth of the producer's time.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_bad_bytes(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _excerpt(text: str) -> str:
    # Stored in input_errors: no bytes Postgres text refuses (NUL, invalid UTF-8).
    clipped = text[:200].replace("\x00", "\\x00")
    return clipped.encode("utf-8", "replace").decode("utf-8", "replace")


def detect_format(name: str, first_line: bytes | None = None) -> Format:
    """The format implied by a file name, or by the first line of a stream."""
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith(".txt"):
        return "text"
    if first_line is not None and first_line.lstrip().startswith(b"{"):
        return "jsonl"
    return "text"


def _check_text(line_no: int, value: object, field: str, raw: str) -> Rejected | str:
    if value is None:
        return Rejected(line_no, f"line {line_no}: missing field {field!r}", _excerpt(raw))
    if not isinstance(value, str):
        return Rejected(
            line_no,
            f"line {line_no}: field {field!r} must be text, got {type(value).__name__}",
            _excerpt(raw),
        )
    if _has_bad_bytes(value):
        return Rejected(line_no, f"line {line_no}: text is not valid UTF-8", _excerpt(raw))
    if not value.strip():
        return Rejected(line_no, f"line {line_no}: text is empty", _excerpt(raw))
    if "\x00" in value:
        return Rejected(line_no, f"line {line_no}: text contains NUL bytes", _excerpt(raw))
    return value


def _external_id(line_no: int, value: object, raw: str) -> str | Rejected:
    if value is None:
        return str(line_no)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Rejected(line_no, f"line {line_no}: id must be text or an integer", _excerpt(raw))
    ext = str(value)
    if not ext or len(ext) > 255 or _has_bad_bytes(ext) or "\x00" in ext:
        return Rejected(
            line_no, f"line {line_no}: id must be 1-255 valid characters", _excerpt(raw)
        )
    return ext


def _lines(stream: Iterable[bytes], first_line: int = 1) -> Iterator[tuple[int, str]]:
    for line_no, raw in enumerate(stream, start=first_line):
        yield line_no, raw.decode("utf-8", "surrogateescape").rstrip("\r\n")


def read_jsonl(
    stream: Iterable[bytes], text_field: str, id_field: str | None, first_line: int = 1
) -> Iterator[Record | Rejected]:
    """JSON objects, one per line; blank lines are skipped."""
    for line_no, line in _lines(stream, first_line):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejected(line_no, f"line {line_no}: invalid JSON ({exc.msg})", _excerpt(line))
            continue
        if not isinstance(obj, dict):
            yield Rejected(line_no, f"line {line_no}: expected a JSON object", _excerpt(line))
            continue
        yield from _record(
            line_no, obj.get(text_field), text_field, obj.get(id_field) if id_field else None, line
        )


def _record(
    line_no: int, text: object, field: str, ext: object, raw: str
) -> Iterator[Record | Rejected]:
    checked = _check_text(line_no, text, field, raw)
    if isinstance(checked, Rejected):
        yield checked
        return
    ext_id = _external_id(line_no, ext, raw)
    if isinstance(ext_id, Rejected):
        yield ext_id
        return
    yield Record(line_no, ext_id, checked)


def validate(line_no: int, text: object, ext: object) -> Record | Rejected:
    """One document given as values (an application, a stream entry): a Record, or
    why it cannot be one."""
    raw = text if isinstance(text, str) else repr(text)
    return next(_record(line_no, text, "text", ext, raw))


def read_csv(
    stream: BinaryIO, text_field: str, id_field: str | None, delimiter: str = ","
) -> Iterator[Record | Rejected]:
    """CSV with a header row; ``line_no`` is the record's first physical line."""
    wrapper = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(wrapper, delimiter=delimiter)
    if reader.fieldnames is None:
        return
    if text_field not in reader.fieldnames:
        yield Rejected(
            1,
            f"line 1: no column {text_field!r} (columns: {', '.join(reader.fieldnames)})",
            "",
        )
        return
    line_no = reader.line_num + 1
    for row in reader:
        raw = ",".join(v for v in row.values() if isinstance(v, str))
        if None in row:
            yield Rejected(line_no, f"line {line_no}: more fields than the header", _excerpt(raw))
        else:
            yield from _record(
                line_no,
                row.get(text_field),
                text_field,
                row.get(id_field) if id_field else None,
                raw,
            )
        line_no = reader.line_num + 1


def read_text(stream: Iterable[bytes], first_line: int = 1) -> Iterator[Record | Rejected]:
    """One document per line (its id: the line number); blank lines are skipped."""
    for line_no, line in _lines(stream, first_line):
        if not line.strip():
            continue
        yield from _record(line_no, line, "text", None, line)


def read_records(
    stream: BinaryIO,
    fmt: Format,
    name: str = "-",
    text_field: str = "text",
    id_field: str | None = "id",
    first_line: int = 1,
) -> Iterable[Record | Rejected]:
    """Records of ``stream`` in format ``fmt`` (``auto``: by name, else by content);
    lines are numbered from ``first_line`` (a follower resuming a file)."""
    if fmt == "auto":
        # Peek at the first line without consuming it (stdin cannot be rewound).
        buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(cast(Any, stream))
        fmt = detect_format(name, buffered.peek(4096).split(b"\n", 1)[0])
        stream = buffered
    if fmt == "jsonl":
        return read_jsonl(stream, text_field, id_field, first_line)
    if fmt == "csv":
        return read_csv(stream, text_field, id_field, "\t" if name.endswith(".tsv") else ",")
    return read_text(stream, first_line)
