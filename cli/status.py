"""``shiftdown status RUN`` and ``shiftdown wait RUN``: where a run's documents are."""

from __future__ import annotations

import json
import time

import click
from sqlalchemy import func, select

from cli.common import ensure_schema, handle_errors
from cli.progress import progress_bar
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.reporting import documents_by_state, latest_run_id
from shiftdown.schema import DocState, InputError, Run

# States a document does not leave without an operator (shiftdown escalate) or a retry.
SETTLED = (
    DocState.CLASSIFIED,
    DocState.FRONTIER_FAILED,
    DocState.FAILED,
    DocState.AWAITING_FRONTIER,
)


def run_counts(run_id: int | None) -> tuple[int, dict[str, int], int, bool]:
    """(run id, documents by state, rejected records, submission finished)."""
    with session_scope() as session:
        run_id = run_id or latest_run_id(session)
        run = session.get(Run, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id}")
        states = documents_by_state(session, run_id)
        rejected = session.scalar(select(func.count()).where(InputError.run_id == run_id)) or 0
        return run_id, states, rejected, run.submitted_at is not None


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@handle_errors
def status(run_id: int | None, as_json: bool) -> None:
    """Documents of RUN_ID (default: the latest run) by state."""
    ensure_schema()
    run_id, states, rejected, submitted = run_counts(run_id)
    if as_json:
        click.echo(
            json.dumps(
                {"run_id": run_id, "states": states, "rejected": rejected, "submitted": submitted}
            )
        )
        return
    click.echo(f"run {run_id}" + ("" if submitted else " (open: more documents may come)"))
    for state in DocState:
        if states.get(state):
            click.echo(f"  {state.value:<18} {states[state]:>10,}")
    click.echo(f"  {'rejected input':<18} {rejected:>10,}")


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 1)."
)
@handle_errors
def wait(run_id: int | None, timeout: float | None) -> None:
    """Wait until every document of RUN_ID is settled, with a progress bar, rate and ETA.

    On an open run (a stream still feeding it), until every document it holds so far
    is settled."""
    ensure_schema()
    run_id, states, _, submitted = run_counts(run_id)
    deadline = time.monotonic() + timeout if timeout else None
    with progress_bar(f"run {run_id}", total=sum(states.values()) or None) as advance:
        done = 0
        while True:
            run_id, states, _, submitted = run_counts(run_id)
            settled = sum(states.get(s, 0) for s in SETTLED)
            advance(settled - done)
            done = settled
            total = sum(states.values())
            # An open run (a stream) may never end: it is waited for until what it
            # holds so far has settled.
            if settled == total and (submitted or total):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(
                    f"run {run_id}: {settled} of {sum(states.values())} settled"
                )
            time.sleep(1.0)
    click.echo(
        f"run {run_id}: {done} document(s) settled"
        + ("" if submitted else " so far (the run is open: more may come)")
    )
