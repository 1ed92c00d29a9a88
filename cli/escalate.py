"""``shiftdown escalate --pending``: send parked documents to the frontier model."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors
from producers.escalate import escalate_pending


@click.command()
@click.option(
    "--pending", is_flag=True, required=True, help="Send documents parked as awaiting_frontier."
)
@click.option("--run", "run_id", type=int, default=None, help="Only this run's documents.")
@handle_errors
def escalate(pending: bool, run_id: int | None) -> None:
    """Send documents that waited for a frontier endpoint to it now."""
    ensure_schema()
    n = escalate_pending(run_id)
    click.echo(f"{n} document(s) sent to the frontier queue")
