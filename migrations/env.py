"""Alembic environment: one code path for Postgres and SQLite (batch mode for the latter)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from shiftdown.db import get_engine
from shiftdown.schema import Base
from shiftdown.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with get_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
