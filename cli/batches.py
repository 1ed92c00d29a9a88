"""``shiftdown batches``: send waiting escalations as Batch API batches and record the
batches that have ended (what batch-mode workers do on their own), and list them."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cli.common import ensure_schema, handle_errors
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import FrontierBatch
from shiftdown.settings import get_settings
from workers.batch import batch_pass, pending


@click.command()
@click.option("--now", is_flag=True, help="Send what waits without waiting for it to gather.")
@click.option(
    "--wait", "wait_s", type=float, default=None, help="Repeat until nothing waits (at most S)."
)
@handle_errors
def batches(now: bool, wait_s: float | None) -> None:
    """Batch mode: one send pass and one collect pass (or until nothing waits), then the
    batches and their state."""
    ensure_schema()
    s = get_settings()
    if s.frontier_mode != "batch" or not s.frontier_configured:
        raise ConfigError("batch mode needs SHIFTDOWN_FRONTIER_MODE=batch and a frontier")
    deadline = time.monotonic() + (wait_s or 0)
    sent, recorded = batch_pass(now)
    while wait_s is not None and pending() and time.monotonic() < deadline:
        time.sleep(min(s.frontier_batch_poll_s, 5.0))
        more = batch_pass(now)
        sent, recorded = sent + more[0], recorded + more[1]
    click.echo(f"sent {sent} request(s); recorded {recorded} line(s); {pending()} waiting")
    table = Table(title="frontier batches")
    for name in ("id", "provider id", "state", "provider status", "requests", "sent", "ended"):
        table.add_column(name)
    with session_scope() as session:
        for b in session.scalars(select(FrontierBatch).order_by(FrontierBatch.id.desc()).limit(20)):
            table.add_row(
                str(b.id),
                b.provider_batch_id or "-",
                b.state,
                b.provider_status or "-",
                str(b.requests),
                f"{b.submitted_at:%Y-%m-%d %H:%M:%S}" if b.submitted_at else "-",
                f"{b.finished_at:%Y-%m-%d %H:%M:%S}" if b.finished_at else "-",
            )
    Console().print(table)
