"""``shiftdown results``: each settled document's label, as JSONL or CSV, streamed."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import click

from cli.common import ensure_schema, handle_errors
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.reporting import documents_by_state, latest_run_id
from shiftdown.results import (
    FIELDS,
    PAGE_SIZE,
    SETTLED,
    ResultRow,
    export_pages,
    follow_results,
    parked_count,
)
from shiftdown.schema import Run

FORMATS = ("jsonl", "csv")


class ResultWriter:
    """Writes result rows to a text stream as JSONL or CSV (header ``FIELDS``; ``meta``
    as a JSON string), flushed page by page so that a reader of a growing file or pipe
    sees whole pages."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown results format {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.written = 0
        self._csv: csv.DictWriter[str] | None = None
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=list(FIELDS), lineterminator="\n")
            self._csv.writeheader()

    def write_page(self, rows: Iterable[ResultRow]) -> None:
        """Write ``rows`` and flush."""
        for row in rows:
            data = row.as_dict()
            if self._csv is not None:
                if data["meta"] is not None:
                    data["meta"] = json.dumps(data["meta"], ensure_ascii=False)
                self._csv.writerow(data)
            else:
                self.stream.write(json.dumps(data, ensure_ascii=False) + "\n")
            self.written += 1
        self.stream.flush()


def format_for(path: str | Path) -> str:
    """The results format a file name asks for: ``.csv`` is CSV, anything else JSONL."""
    return "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"


@contextmanager
def open_output(out: str | None) -> Iterator[TextIO]:
    """The file ``out`` (created or truncated), or stdout."""
    if out is None or out == "-":
        yield sys.stdout
        return
    # newline="": the csv module writes its own line ends.
    with open(out, "w", encoding="utf-8", newline="") as stream:
        yield stream


def write_run_results(run_id: int, out: str, fmt: str | None = None) -> int:
    """Write the run's settled documents to ``out`` (format from its extension unless
    given); how many were written."""
    with open_output(out) as stream:
        writer = ResultWriter(stream, fmt or format_for(out))
        for page in export_pages(run_id):
            writer.write_page(page)
        return writer.written


def _left_over(run_id: int, following: bool) -> str | None:
    """A line on the run's documents without a result, or None when there are none."""
    with session_scope() as session:
        if following:
            parked, unsettled = parked_count(session, run_id), 0
        else:
            states = documents_by_state(session, run_id)
            parked = states.get("awaiting_frontier", 0)
            unsettled = sum(n for s, n in states.items() if s not in SETTLED)
    parts = []
    if unsettled:
        parts.append(f"{unsettled} not settled yet (`shiftdown results --follow` waits)")
    if parked:
        parts.append(f"{parked} awaiting the frontier (`shiftdown escalate`)")
    return f"run {run_id}: " + "; ".join(parts) if parts else None


def _quiet_broken_pipe() -> None:
    # `shiftdown results | head`: the reader left; stop without a traceback, and point
    # stdout at /dev/null so that the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Output format (default: from --out's extension, else jsonl).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Go on printing documents as they settle, until the run is settled (forever for "
    "an open run).",
)
@click.option("--page-size", type=click.IntRange(1), default=PAGE_SIZE, hidden=True)
@handle_errors
def results(
    run_id: int | None, fmt: str | None, out: str | None, follow: bool, page_size: int
) -> None:
    """Each settled document of RUN_ID (default: the latest run): external id, label,
    stage, confidence and frontier cost.

    Streamed from the store in id order, a page at a time, in constant memory."""
    ensure_schema()
    with session_scope() as session:
        run_id = run_id or latest_run_id(session)
        if session.get(Run, run_id) is None:
            raise ConfigError(f"no run {run_id}")
    fmt = fmt or (format_for(out) if out else "jsonl")
    pages: Iterator[list[ResultRow]]
    if follow:
        pages = follow_results(run_id, page_size=page_size)
    else:
        pages = export_pages(run_id, page_size)
    try:
        with open_output(out) as stream:
            writer = ResultWriter(stream, fmt)
            for page in pages:
                writer.write_page(page)
    except KeyboardInterrupt:
        # Following an open run ends here; what was written is flushed, page by page.
        sys.exit(130)
    except BrokenPipeError:
        _quiet_broken_pipe()
    if out:
        click.echo(f"wrote {writer.written} result(s) to {out}", err=True)
    note = _left_over(run_id, follow)
    if note:
        click.echo(note, err=True)
