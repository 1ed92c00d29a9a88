"""Each worker's reconciliation sweep (``workers.reconcile.sweep``), its results-outbox
sweep (``workers.results_stream``, with a results stream), its recovery pass after a
frontier outage (``workers.frontier_recovery``) and, in batch mode, its batch passes
(``workers.batch``), started when the worker is ready and stopped when it shuts down, in
the worker's main process."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from shiftdown.settings import get_settings
from workers import results_stream
from workers.reconcile import Sweeper

_sweepers: list[Sweeper] = []


@worker_ready.connect
def _start(**_: Any) -> None:
    s = get_settings()
    # Postgres's advisory lock keeps passes from overlapping; SQLite runs embedded.
    if not s.database_url.startswith("postgresql"):
        return
    if s.reconcile_interval_s > 0:
        _sweepers.append(Sweeper(s.reconcile_interval_s).start())
    if results_stream.enabled():
        # Results a worker settled but could not append (Redis away, killed between
        # its commit and its append) go from the outbox once SWEEP_AFTER_S old.
        _sweepers.append(Sweeper(results_stream.SWEEP_AFTER_S, results_stream.sweep_outbox).start())
    if s.frontier_recover_interval_s > 0 and s.frontier_configured:
        from workers.frontier_recovery import recover_pass

        # Documents parked by a frontier outage go back once a probe is answered.
        _sweepers.append(Sweeper(s.frontier_recover_interval_s, recover_pass).start())
    if s.frontier_mode == "batch" and s.frontier_configured:
        from workers.batch import batch_pass

        _sweepers.append(Sweeper(s.frontier_batch_poll_s, batch_pass).start())


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    while _sweepers:
        _sweepers.pop().stop()
