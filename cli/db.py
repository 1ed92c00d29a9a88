"""``shiftdown db``: schema migrations (the same as ``alembic upgrade head``)."""

from __future__ import annotations

import click

import migrations


@click.group()
def db() -> None:
    """Create or migrate the store's schema."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the database to REVISION (default: head)."""
    migrations.upgrade(revision=revision)
    click.echo(f"database at {revision}")


@db.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask: a downgrade drops tables and their rows.")
def downgrade(revision: str, yes: bool) -> None:
    """Downgrade the database to REVISION (``base`` drops every table)."""
    if not yes:
        # What a downgrade drops is gone: results, frontier calls, teacher data.
        click.confirm(
            f"Downgrade to {revision}? The tables and columns it removes are dropped with "
            "their data.",
            abort=True,
        )
    migrations.downgrade(revision=revision)
    click.echo(f"database at {revision}")
