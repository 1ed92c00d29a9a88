"""``shiftdown ingest --stream KEY``: submit the entries of a Redis Stream as they come."""

from __future__ import annotations

import signal
import socket
from types import FrameType

import click
from sqlalchemy import select

from cli.common import ensure_schema, handle_errors, load_taxonomy
from cli.options import (
    id_column_option,
    model_option,
    task_option,
    taxonomy_option,
    text_column_option,
)
from cli.progress import progress_bar
from producers.stream_ingest import StreamReader, StreamSource
from producers.submit import create_run, reopen_run, submit_records
from shiftdown.db import session_scope
from shiftdown.schema import Run
from shiftdown.settings import get_settings


def stream_run(source_name: str) -> int | None:
    """The open run a consumer of this stream and group fed last, if any."""
    with session_scope() as session:
        return session.scalar(
            select(Run.id)
            .where(Run.source == source_name, Run.submitted_at.is_(None))
            .order_by(Run.id.desc())
            .limit(1)
        )


@click.command()
@click.option("--stream", "key", required=True, help="Redis Stream key to read.")
@click.option("--group", default="shiftdown", show_default=True, help="Consumer group.")
@click.option(
    "--consumer",
    default=None,
    help="This consumer's name in the group (default: the host name); a restart under "
    "the same name takes up its own pending entries at once.",
)
@click.option("--redis", "url", default=None, help="Redis URL (default: the broker's).")
@text_column_option("Stream entry field of the text.")
@id_column_option("Stream entry field of the id (default: the entry id).")
@click.option(
    "--claim-idle-ms",
    type=int,
    default=60_000,
    show_default=True,
    help="Take over entries another consumer read and left unacknowledged this long.",
)
@taxonomy_option
@task_option
@model_option()
@handle_errors
def ingest(
    key: str,
    group: str,
    consumer: str | None,
    url: str | None,
    text_column: str,
    id_column: str,
    claim_idle_ms: int,
    taxonomy: str | None,
    task_name: str | None,
    model_ref: str | None,
) -> None:
    """Submit each entry of a Redis Stream as it arrives, until SIGINT or SIGTERM.

    Entries are acknowledged once their documents are committed. Every consumer of the
    same stream and group feeds one open run (see `shiftdown results RUN --follow`).
    """
    ensure_schema()
    url = url or get_settings().broker_url
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        raise click.UsageError("give --redis URL (the broker is not Redis)")
    source_name = f"redis-stream:{key}:{group}"
    run_id = stream_run(source_name)
    slm_queue = reopen_run(run_id) if run_id is not None else None
    if run_id is None or slm_queue is None:
        name = task_name or get_settings().task
        run_id, slm_queue = create_run(name, load_taxonomy(taxonomy), model_ref, source_name)
    reader = StreamReader(
        StreamSource(
            url, key, group, consumer or socket.gethostname(), text_column, id_column, claim_idle_ms
        )
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        reader.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    click.echo(
        f"run {run_id} (reading {key} as {reader.source.consumer}; Ctrl-C to stop)", err=True
    )
    try:
        with progress_bar(f"run {run_id}", total=None) as advance:
            result = submit_records(
                run_id,
                reader,
                slm_queue,
                on_progress=advance,
                on_stored=reader.committed,
                close=False,
                redelivered_ok=True,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(
        f"run {run_id}: {result.submitted} stored, {result.rejected} rejected, "
        f"{result.duplicates} already stored; {reader.acked} entries acknowledged",
        err=True,
    )
