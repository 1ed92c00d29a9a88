"""``shiftdown escalate``: send documents that wait for the frontier model (or that it
failed through no fault of theirs) to it; those it refused, only when asked."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors
from producers.escalate import Selection, count_pending, escalate_pending


@click.command()
@click.option("--run", "run_id", type=int, default=None, help="Only this run's documents.")
@click.option(
    "--pending",
    is_flag=True,
    help="Only documents parked as awaiting_frontier, none that ended frontier_failed.",
)
@click.option(
    "--refused",
    is_flag=True,
    help="Also documents the frontier refused (a 4xx other than a rate limit) or answered "
    "badly through every retry: they are billed again and may fail the same way. Needs "
    "--run or --all, and asks first.",
)
@click.option("--all", "all_runs", is_flag=True, help="With --refused: every run's.")
@click.option("--dry-run", is_flag=True, help="Count what would be sent; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before sending refused documents.")
# --no-failed once left failed documents out (now --pending); --failed was the default.
@click.option("--failed/--no-failed", default=True, hidden=True)
@handle_errors
def escalate(
    run_id: int | None,
    pending: bool,
    refused: bool,
    all_runs: bool,
    dry_run: bool,
    yes: bool,
    failed: bool,
) -> None:
    """Send to the frontier now: documents parked as awaiting_frontier (no frontier
    configured, a budget cap, an outage) and those that ended frontier_failed because it
    was unavailable. Documents it refused go only with --refused."""
    ensure_schema()
    if refused and run_id is None and not all_runs:
        raise click.UsageError("--refused needs --run RUN or --all")
    if refused and pending:
        raise click.UsageError("--refused and --pending exclude each other")
    only_parked = pending or not failed
    selection = Selection(run_id=run_id, failed_unavailable=not only_parked, refused=refused)
    n = count_pending(selection)
    if dry_run:
        click.echo(f"{n} document(s) would be sent to the frontier queue")
        return
    if refused and n and not yes:
        refused_n = count_pending(
            Selection(run_id=run_id, parked=False, failed_unavailable=False, refused=True)
        )
        click.confirm(
            f"Send {n} document(s), {refused_n} of them refused by the frontier before "
            "(each is billed again)?",
            abort=True,
        )
    n = escalate_pending(selection)
    click.echo(f"{n} document(s) sent to the frontier queue")
