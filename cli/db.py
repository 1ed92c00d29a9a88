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
def downgrade(revision: str) -> None:
    """Downgrade the database to REVISION (``base`` drops every table)."""
    migrations.downgrade(revision=revision)
    click.echo(f"database at {revision}")
