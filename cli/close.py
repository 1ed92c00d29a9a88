"""``shiftdown close RUN``: no more documents will come to an open run."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors
from producers.submit import close_run
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import Run


@click.command()
@click.argument("run_id", type=int)
@handle_errors
def close(run_id: int) -> None:
    """Mark the open run RUN_ID submitted (a followed file or a stream that has ended).

    `wait` and `results --follow` then end once its documents have settled. A producer
    still feeding it (submit --follow, ingest) goes on adding documents to it, and a
    new follower or consumer starts a new run.
    """
    ensure_schema()
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id}")
        if run.submitted_at is not None:
            click.echo(f"run {run_id} is closed already", err=True)
            return
    close_run(run_id)
    click.echo(f"run {run_id} closed", err=True)
