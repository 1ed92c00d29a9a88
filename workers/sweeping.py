"""Each worker's reconciliation sweep (``workers.reconcile.sweep``), started when the
worker is ready and stopped when it shuts down, in the worker's main process."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from shiftdown.settings import get_settings
from workers.reconcile import Sweeper

_sweeper: Sweeper | None = None


@worker_ready.connect
def _start(**_: Any) -> None:
    global _sweeper
    s = get_settings()
    # Postgres's advisory lock keeps passes from overlapping; SQLite runs embedded.
    if s.reconcile_interval_s > 0 and s.database_url.startswith("postgresql"):
        _sweeper = Sweeper(s.reconcile_interval_s).start()


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
