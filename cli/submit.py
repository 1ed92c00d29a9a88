"""``shiftdown submit``: push documents to the queue and print the run id."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import click

from cli.common import ensure_schema, handle_errors, load_taxonomy, open_source
from cli.options import SourceOptions, input_options
from cli.progress import progress_bar
from producers.follow import Follower, FollowState
from producers.readers import detect_format, read_jsonl, read_records, read_text
from producers.submit import (
    SubmitResult,
    create_run,
    preload_model,
    reopen_run,
    submit_records,
)
from shiftdown.settings import get_settings


def estimate_records(source: str, limit: int | None) -> int | None:
    """Lines in a file (an upper bound on its records), for the progress bar's ETA.

    One pass of binary reads, about a second per GB; stdin has no length to measure.
    """
    if source == "-":
        return limit
    lines = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return min(lines, limit) if limit is not None else lines


def submit_source(src: SourceOptions) -> SubmitResult:
    """Create a run and submit ``src.source`` to it, with a progress bar."""
    from itertools import islice

    ensure_schema()
    task_name = src.task_name or get_settings().task
    run_id, queue = create_run(
        task_name, load_taxonomy(src.taxonomy), src.model_ref, src.source, src.open_set
    )
    preload_model(run_id)
    click.echo(f"run {run_id}", err=True)
    with open_source(src.source) as stream:
        records = read_records(stream, src.fmt, src.source, src.text_column, src.id_column or None)
        if src.limit is not None:
            records = islice(records, src.limit)
        total = estimate_records(src.source, src.limit)
        with progress_bar(f"run {run_id}", total=total) as advance:
            result = submit_records(run_id, records, queue, on_progress=advance)
    if result.rejected:
        click.echo(
            f"{result.rejected} record(s) rejected (see input_errors; "
            f"`shiftdown report {run_id}` counts them)",
            err=True,
        )
    return result


def follow_source(src: SourceOptions) -> SubmitResult:
    """Follow the file ``src.source`` as ``tail -F`` does, submitting each line as it is
    written, until SIGINT or SIGTERM; what was read by then is committed. The run stays
    open, and a later follower of the same file goes on in it from where this one was."""
    ensure_schema()
    path = Path(src.source).resolve()
    fmt = src.fmt if src.fmt != "auto" else detect_format(path.name)
    if fmt == "csv":
        raise click.BadParameter("--follow reads JSONL or text lines", param_hint="--format")
    state = FollowState.load(path)
    queue = reopen_run(state.run_id) if state else None
    if state is None or queue is None:
        task_name = src.task_name or get_settings().task
        taxonomy = load_taxonomy(src.taxonomy)
        run_id, queue = create_run(task_name, taxonomy, src.model_ref, str(path), src.open_set)
        state = FollowState(run_id=run_id, inode=0, offset=0, line_no=0)
        state.save(path)
    preload_model(state.run_id)
    click.echo(f"run {state.run_id} (following {path}; Ctrl-C to stop)", err=True)
    follower = Follower(path, state)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        follower.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        first = state.line_no + 1
        records = (
            read_jsonl(follower, src.text_column, src.id_column or None, first)
            if fmt == "jsonl"
            else read_text(follower, first)
        )
        with progress_bar(f"run {state.run_id}", total=None) as advance:
            return submit_records(
                state.run_id,
                records,
                queue,
                on_progress=advance,
                on_stored=follower.committed,
                close=False,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command()
@input_options
@click.option(
    "--follow",
    is_flag=True,
    help="Keep reading SOURCE as it grows, as tail -F does (rotation and truncation "
    "included), until SIGINT or SIGTERM; a restart resumes where it stopped.",
)
@handle_errors
def submit(src: SourceOptions, follow: bool) -> None:
    """Submit documents from SOURCE (a JSONL, CSV or text file, or - for stdin).

    Prints the run id on stdout. With a broker configured, workers classify the
    documents; without one, they are classified in this process. Documents go as they
    arrive: a chunk is sent when full or when its oldest document has waited
    SHIFTDOWN_SUBMIT_LINGER_MS.
    """
    if follow and src.source == "-":
        raise click.BadParameter("--follow needs a file (stdin is followed already)")
    result = follow_source(src) if follow else submit_source(src)
    click.echo(result.run_id)
