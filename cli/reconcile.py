"""``shiftdown reconcile RUN``: re-enqueue documents whose task the broker lost."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors
from producers.reconcile import reconcile as reconcile_run


@click.command()
@click.argument("run_id", type=int)
@click.option(
    "--min-age",
    default=60.0,
    show_default=True,
    help="Seconds a document must have waited (younger ones may still be in transit).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be sent again.")
@handle_errors
def reconcile(run_id: int, min_age: float, dry_run: bool) -> None:
    """Find RUN's documents with no final result and no task on the broker, and
    enqueue them again (tasks are idempotent: nothing is done twice, and a call is billed
    twice only where a worker dies, or Postgres stays away, between its answer and its
    record)."""
    ensure_schema()
    r = reconcile_run(run_id, min_age, dry_run)
    verb = "would send" if dry_run else "sent"
    click.echo(
        f"{r.unsettled} unsettled, {r.in_flight} still carried by the broker; {verb} "
        f"{r.requeued_slm} to the SLM and {r.requeued_frontier} to the frontier again"
    )
