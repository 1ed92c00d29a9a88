"""``shiftdown escalate``: send documents that wait for the frontier model (or that it
failed) to it."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors
from producers.escalate import escalate_pending


@click.command()
@click.option("--run", "run_id", type=int, default=None, help="Only this run's documents.")
@click.option(
    "--failed/--no-failed",
    default=True,
    show_default=True,
    help="Also send documents that ended frontier_failed.",
)
# The flag every call once had to give; kept, hidden, for scripts that still pass it.
@click.option("--pending", is_flag=True, hidden=True)
@handle_errors
def escalate(run_id: int | None, failed: bool, pending: bool) -> None:
    """Send documents parked as awaiting_frontier (no frontier configured, a budget cap,
    an outage) and, unless --no-failed, those that ended frontier_failed, to the
    frontier now."""
    ensure_schema()
    n = escalate_pending(run_id, failed)
    click.echo(f"{n} document(s) sent to the frontier queue")
