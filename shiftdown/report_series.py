"""The series behind the report's charts, aggregated in the database: time buckets,
cumulative sums (window functions), a latency histogram and the labels escalated most.

What comes back to Python is a few hundred rows whatever the run's size, on Postgres
and on SQLite alike (their spellings of "seconds since" differ, see :func:`_bucket`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Integer, SQLColumnExpression, case, cast, func, select, text
from sqlalchemy.orm import Session, aliased

from shiftdown.errors import ConfigError
from shiftdown.schema import DocState, Document, FrontierCall, Prediction, Run, Stage, as_utc
from shiftdown.units import nice_step, time_unit

# About this many time buckets span a run, whatever its length.
BUCKETS = 150
# The throughput chart's rolling window: about this share of the run, and at least
# this many times the usual gap between a stage's writes (workers write in batches), but
# not over a quarter of the run.
WINDOW_SHARE = 1 / 15
WINDOW_GAPS = 3
LATENCY_BINS = 24
TOP_LABELS = 20
STAGES = (Stage.SLM, Stage.FRONTIER)
# SQLite's julianday is a double of about 40 microseconds' resolution (and reads times to
# the millisecond): a time on a bucket's edge can come back just short of it. This many
# seconds put it in the bucket it starts.
EPSILON_S = 1e-4


@dataclass(frozen=True)
class LabelRate:
    """One predicted label: its SLM predictions and how many of them were escalated."""

    label: str
    documents: int
    escalated: int


@dataclass(frozen=True)
class RunSeries:
    """Everything the charts draw, already aggregated."""

    span_s: float  # from the run's creation to its last recorded event
    bucket_s: float
    window_buckets: int  # the rolling window of the throughput, in buckets
    throughput: dict[str, list[int]]  # predictions per bucket, per stage
    spend: list[tuple[float, float]]  # (seconds, cumulative frontier USD), from (0, 0)
    handled: list[tuple[float, int]]  # (seconds, cumulative documents out of the SLM queue)
    labels: list[LabelRate]  # the most escalated labels (any escalated), highest rate first
    n_labels: int  # labels the SLM predicted in this run
    latency_edges: list[float]  # ms, log-spaced, shared by the stages
    latency_counts: dict[str, list[int]]  # documents per latency bin, per stage

    @property
    def window_s(self) -> float:
        """The rolling window of the throughput chart, in seconds."""
        return self.window_buckets * self.bucket_s

    def rolling_rate(self, stage: str) -> list[tuple[float, float]]:
        """(seconds, documents per second over the trailing window) at each bucket's end,
        from the first full window on (a shorter run: from its last bucket)."""
        counts = np.asarray(self.throughput.get(stage, []), dtype=np.float64)
        if not counts.size:
            return []
        n, k = len(counts), self.window_buckets
        totals = np.cumsum(counts)
        trailing = totals - np.concatenate([np.zeros(k), totals])[:n]
        ends = np.minimum(np.arange(1, n + 1) * self.bucket_s, self.span_s)
        starts = np.maximum(np.arange(1 - k, n + 1 - k), 0) * self.bucket_s
        # The last bucket ends with the run, often before its full width.
        rates = trailing / np.maximum(ends - starts, 1e-9)
        start = min(k, n) - 1
        return [(float(t), float(r)) for t, r in zip(ends[start:], rates[start:], strict=True)]


def _utc_epoch(ts: datetime) -> float:
    return as_utc(ts).timestamp()


def _bucket(
    session: Session, column: SQLColumnExpression[datetime], origin: float, width: float
) -> Any:
    """The index of ``column``'s time bucket: whole ``width``-second steps since ``origin``
    (epoch seconds)."""
    if session.get_bind().dialect.name == "postgresql":
        steps = (func.extract("epoch", column) - origin + EPSILON_S) / width
        return cast(func.floor(steps), Integer)
    # julianday 2440587.5 is the Unix epoch; CAST truncates, which is floor from 0 up.
    steps = ((func.julianday(column) - 2440587.5) * 86400.0 - origin + EPSILON_S) / width
    return cast(steps, Integer)


def _last_event(session: Session, run_id: int) -> datetime | None:
    latest = [
        select(func.max(Prediction.created_at)).where(Prediction.run_id == run_id),
        select(func.max(FrontierCall.created_at)).where(FrontierCall.run_id == run_id),
        select(func.max(Document.updated_at)).where(
            Document.run_id == run_id, Document.state != DocState.QUEUED
        ),
    ]
    found = [session.scalar(q) for q in latest]
    return max((as_utc(t) for t in found if t), default=None)


def _cumulative(
    session: Session,
    when: SQLColumnExpression[datetime],
    value: SQLColumnExpression[float | None] | None,
    where: Sequence[ColumnElement[bool]],
    clock: tuple[float, float],
    joins: Sequence[tuple[Any, ColumnElement[bool]]] = (),
    base: Any = None,
) -> list[tuple[int, float]]:
    """(bucket, running total) of ``value`` (or of rows) per time bucket of ``when``;
    ``clock`` is (origin, bucket width)."""
    origin, width = clock
    inner = select(_bucket(session, when, origin, width).label("bucket"))
    if base is not None:
        inner = inner.select_from(base)
    if value is not None:
        inner = inner.add_columns(value.label("value"))
    for target, on in joins:
        inner = inner.outerjoin(target, on)
    sub = inner.where(*where).subquery()
    per_bucket = func.coalesce(func.sum(sub.c.value), 0.0) if value is not None else func.count()
    rows = session.execute(
        select(sub.c.bucket, func.sum(per_bucket).over(order_by=sub.c.bucket))
        .group_by(sub.c.bucket)
        .order_by(sub.c.bucket)
    ).all()
    return [(max(0, int(b)), float(total or 0)) for b, total in rows]


def _steps(rows: list[tuple[int, float]], width: float, span: float) -> list[tuple[float, float]]:
    points = [(0.0, 0.0)] + [(min((b + 1) * width, span), total) for b, total in rows]
    if points[-1][0] < span:
        points.append((span, points[-1][1]))
    return points


def run_series(session: Session, run_id: int) -> RunSeries:
    """The chart series of one run, aggregated in the store."""
    run = session.get(Run, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id}")
    origin = _utc_epoch(run.created_at)
    last = _last_event(session, run_id)
    span = max(last.timestamp() - origin, 1e-3) if last else 1e-3
    width = nice_step(span / BUCKETS)
    n_buckets = int(span / width) + 1
    clock = (origin, width)

    throughput: dict[str, list[int]] = {stage: [0] * n_buckets for stage in STAGES}
    sub = (
        select(
            Prediction.stage,
            _bucket(session, Prediction.created_at, origin, width).label("bucket"),
        )
        .where(Prediction.run_id == run_id, Prediction.stage.in_(STAGES))
        .subquery()
    )
    for stage, bucket, n in session.execute(
        select(sub.c.stage, sub.c.bucket, func.count()).group_by(sub.c.stage, sub.c.bucket)
    ):
        throughput[stage][min(max(0, int(bucket)), n_buckets - 1)] += int(n)

    spend = _cumulative(
        session,
        FrontierCall.created_at,
        FrontierCall.cost_usd,
        [FrontierCall.run_id == run_id],
        clock,
    )
    # A document counts for the counterfactual once it left the SLM queue: at its SLM
    # prediction, or (bypassed, failed) at its last change.
    slm = aliased(Prediction)
    on = (slm.document_id == Document.id) & (slm.stage == Stage.SLM)
    handled = _cumulative(
        session,
        func.coalesce(slm.created_at, Document.updated_at),
        None,
        [Document.run_id == run_id, Document.state != DocState.QUEUED],
        clock,
        joins=[(slm, on)],
        base=Document,
    )
    labels, n_labels = _top_labels(session, run_id)
    edges, counts = _latency_histogram(session, run_id)
    return RunSeries(
        span_s=span,
        bucket_s=width,
        window_buckets=_window_buckets(throughput, span, width),
        throughput=throughput,
        spend=_steps(spend, width, span),
        handled=[(t, int(n)) for t, n in _steps(handled, width, span)],
        labels=labels,
        n_labels=n_labels,
        latency_edges=edges,
        latency_counts=counts,
    )


def _window_buckets(throughput: dict[str, list[int]], span: float, width: float) -> int:
    """A window wide enough that batched writes read as a rate: a window narrower than
    the gap between batches shows empty stretches that look like stalls."""
    busiest = max(throughput.values(), key=sum)
    written = np.flatnonzero(np.asarray(busiest))
    gap = float(np.median(np.diff(written))) if len(written) > 1 else 1.0
    wanted_s = max(span * WINDOW_SHARE, WINDOW_GAPS * gap * width)
    # A round figure in the unit the title will use: 20 min, not 16.67.
    _, per = time_unit(wanted_s)
    window_s = nice_step(wanted_s / per) * per
    return max(1, min(math.ceil(window_s / width - 1e-9), len(busiest) // 4))


def _top_labels(session: Session, run_id: int) -> tuple[list[LabelRate], int]:
    rows = session.execute(
        text(
            "SELECT slm_label, documents, escalated FROM escalation_by_label "
            "WHERE run_id = :run AND escalated > 0 "
            "ORDER BY escalation_rate DESC, documents DESC, slm_label "
            "LIMIT :n"
        ),
        {"run": run_id, "n": TOP_LABELS},
    ).all()
    n_labels = session.scalar(
        text("SELECT count(*) FROM escalation_by_label WHERE run_id = :run"), {"run": run_id}
    )
    # A NULL label is the none outcome of an open-set task.
    rates = [LabelRate("(none)" if a is None else str(a), int(b), int(c or 0)) for a, b, c in rows]
    return rates, int(n_labels or 0)


def _latency_histogram(session: Session, run_id: int) -> tuple[list[float], dict[str, list[int]]]:
    """Log-spaced bins over both stages' range; counted with one pass of CASE sums."""
    in_run = (Prediction.run_id == run_id, Prediction.stage.in_(STAGES))
    lo, hi = session.execute(
        select(func.min(Prediction.latency_ms), func.max(Prediction.latency_ms)).where(*in_run)
    ).one()
    if lo is None:
        return [], {str(stage): [] for stage in STAGES}
    lo = max(float(lo), 0.01)
    hi = max(float(hi), lo * 1.5)
    edges = [float(e) for e in np.geomspace(lo, hi, LATENCY_BINS + 1)]
    edges[0], edges[-1] = lo, hi
    at_or_below = [
        func.sum(case((Prediction.latency_ms <= edge, 1), else_=0)) for edge in edges[1:-1]
    ]
    counts: dict[str, list[int]] = {stage: [0] * LATENCY_BINS for stage in STAGES}
    for stage, n, *cumulative in session.execute(
        select(Prediction.stage, func.count(), *at_or_below)
        .where(*in_run)
        .group_by(Prediction.stage)
    ):
        below = [0, *(int(c or 0) for c in cumulative), int(n)]
        counts[stage] = [b - a for a, b in pairwise(below)]
    return edges, counts
