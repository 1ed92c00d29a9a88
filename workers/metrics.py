"""Prometheus metrics of the cascade, read from the store and the broker at scrape time.

The store is the source of truth, so the exporter holds no state of its own: any number
of exporters, restarted at any time, report the same numbers. Counters are totals over
the store's lifetime.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from shiftdown.db import session_scope
from shiftdown.schema import Document, FrontierCall, Prediction, Run, Task
from shiftdown.settings import get_settings
from workers.app import queue_depth
from workers.frontier_client import CREDENTIALS_REFUSED

LATENCY_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class StoreCollector(Collector):
    """Collects every shiftdown metric on each scrape."""

    def collect(self) -> Iterator[Any]:
        with session_scope() as session:
            docs = GaugeMetricFamily(
                "shiftdown_documents", "Documents by task and state.", labels=["task", "state"]
            )
            for task, state, n in session.execute(
                select(Run.task_name, Document.state, func.count())
                .select_from(Document)
                .join(Run, Run.id == Document.run_id)
                .group_by(Run.task_name, Document.state)
            ):
                docs.add_metric([task, state], n)
            yield docs

            processed = CounterMetricFamily(
                "shiftdown_predictions", "Documents processed, by stage.", labels=["stage"]
            )
            for stage, n in session.execute(
                select(Prediction.stage, func.count()).group_by(Prediction.stage)
            ):
                processed.add_metric([stage], n)
            yield processed

            escalations = CounterMetricFamily(
                "shiftdown_escalations",
                "SLM predictions below their run's threshold.",
                labels=["task"],
            )
            for task, n in session.execute(
                select(Run.task_name, func.count())
                .select_from(Prediction)
                .join(Run, Run.id == Prediction.run_id)
                .where(Prediction.stage == "slm", Prediction.confidence < Run.threshold)
                .group_by(Run.task_name)
            ):
                escalations.add_metric([task], n)
            yield escalations

            calls = CounterMetricFamily(
                "shiftdown_frontier_calls", "Frontier attempts.", labels=["model", "status"]
            )
            tokens = CounterMetricFamily(
                "shiftdown_frontier_tokens", "Frontier tokens billed.", labels=["model", "kind"]
            )
            dollars = CounterMetricFamily(
                "shiftdown_frontier_usd", "Frontier dollars from the price table.", labels=["model"]
            )
            spent: dict[str, float] = {}
            for model, status, n, pt, ct, usd in session.execute(
                select(
                    FrontierCall.model,
                    FrontierCall.status,
                    func.count(),
                    func.coalesce(func.sum(FrontierCall.prompt_tokens), 0),
                    func.coalesce(func.sum(FrontierCall.completion_tokens), 0),
                    func.coalesce(func.sum(FrontierCall.cost_usd), 0.0),
                ).group_by(FrontierCall.model, FrontierCall.status)
            ):
                calls.add_metric([model, status], n)
                tokens.add_metric([model, f"prompt_{status}"], pt)
                tokens.add_metric([model, f"completion_{status}"], ct)
                spent[model] = spent.get(model, 0.0) + float(usd or 0.0)
            for model, usd in spent.items():
                dollars.add_metric([model], usd)
            yield calls
            # An alert on any increase: every document escalated while the key is
            # refused waits for it (parked), and nothing else says so.
            refused = CounterMetricFamily(
                "shiftdown_frontier_credentials_refused",
                "Frontier calls refused for the deployment's credentials (HTTP 401/403).",
                labels=["model"],
            )
            for model, n in session.execute(
                select(FrontierCall.model, func.count())
                .where(FrontierCall.http_status.in_(CREDENTIALS_REFUSED))
                .group_by(FrontierCall.model)
            ):
                refused.add_metric([model], n)
            yield refused
            yield tokens
            yield dollars

            latency = HistogramMetricFamily(
                "shiftdown_stage_latency_ms",
                "Per-document latency of each stage.",
                labels=["stage"],
            )
            columns = [
                func.sum(case((Prediction.latency_ms <= b, 1), else_=0)) for b in LATENCY_BUCKETS_MS
            ]
            for stage, total, n, *cumulative in session.execute(
                select(
                    Prediction.stage, func.sum(Prediction.latency_ms), func.count(), *columns
                ).group_by(Prediction.stage)
            ):
                buckets = [
                    (str(b), int(c or 0))
                    for b, c in zip(LATENCY_BUCKETS_MS, cumulative, strict=True)
                ]
                latency.add_metric([stage], [*buckets, ("+Inf", n)], float(total or 0.0))
            yield latency

            queues = {get_settings().slm_queue, get_settings().frontier_queue}
            queues |= {q for q in session.scalars(select(Task.queue)) if q}
        depth = GaugeMetricFamily("shiftdown_queue_depth", "Messages waiting.", labels=["queue"])
        for queue in sorted(queues):
            depth.add_metric([queue], queue_depth(queue))
        yield depth
