"""The store's tables, as SQLAlchemy 2.0 typed ORM classes.

Alembic owns the schema (``migrations/``); ``Base.metadata.create_all`` is for tests only.
Postgres is the source of truth for every document's state, never the Celery backend.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from shiftdown.manifest import ModelManifest
from shiftdown.taxonomy import Taxonomy

# Autoincrementing 64-bit ids on Postgres; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timestamps are taken in Python: Postgres' now() is frozen at transaction start."""
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """A stored timestamp with its zone: SQLite hands them back without one, and they
    were written in UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class DocState(enum.StrEnum):
    """Where a document is in the cascade."""

    QUEUED = "queued"  # waiting for the SLM
    CLASSIFIED = "classified"  # has its final label (see documents.final_stage)
    ESCALATED = "escalated"  # below threshold, queued for the frontier model
    AWAITING_FRONTIER = "awaiting_frontier"  # below threshold, no frontier available yet
    FRONTIER_FAILED = "frontier_failed"  # the frontier could not label it (see error)
    FAILED = "failed"  # the SLM could not process it (see error)


class Stage(enum.StrEnum):
    """Which model produced a prediction."""

    SLM = "slm"
    FRONTIER = "frontier"
    AUDIT = "audit"  # the frontier's answer on a kept document, sampled to measure accuracy


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic names constraints stably."""

    metadata = MetaData(naming_convention=NAMING)


class ModelVersion(Base):
    """One registered GGUF model (optionally with a LoRA adapter) for a task."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("task_name", "version", name="uq_model_versions_task_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    gguf_path: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Last time this version became the task's served model; rollback goes back in it.
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def read_manifest(self) -> ModelManifest:
        """The version's manifest, typed."""
        return ModelManifest.read(self.manifest, f"manifest of {self.task_name} v{self.version}")


class Task(Base):
    """A named classification task: taxonomy, promoted model and escalation policy."""

    __tablename__ = "tasks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    taxonomy: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    taxonomy_hash: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    # Documents may end as "none of the labels" (shiftdown.taxonomy, open sets).
    open_set: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    queue: Mapped[str | None] = mapped_column(String(100))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    def read_taxonomy(self) -> Taxonomy:
        """The task's taxonomy as stored, open-set or closed."""
        return Taxonomy.from_data(self.taxonomy).with_open_set(bool(self.open_set))


class Run(Base):
    """One submission of documents to a task."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(ForeignKey("tasks.name"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    threshold: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(Text)
    # Why the SLM is skipped for this run (e.g. its model was trained for another label
    # list): every document goes to the frontier and becomes teacher data.
    slm_bypass: Mapped[str | None] = mapped_column(Text)
    n_submitted: Mapped[int] = mapped_column(Integer, default=0)
    n_rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_UNSETTLED = text("state IN ('queued', 'escalated')")


class Document(Base):
    """One document, its text as given, and its state in the cascade."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("run_id", "external_id", name="uq_documents_run_external_id"),
        Index("ix_documents_run_state", "run_id", "state"),
        # The reconciliation sweep's oldest unsettled documents (migration 0006).
        Index(
            "ix_documents_unsettled_updated_at",
            "updated_at",
            postgresql_where=_UNSETTLED,
            sqlite_where=_UNSETTLED,
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    external_id: Mapped[str] = mapped_column(String(255))
    line_no: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    # What an application producer or a stream entry attached to the document.
    meta: Mapped[dict[str, Any] | None] = mapped_column(Json)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(32), default=DocState.QUEUED)
    final_stage: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # Until when a frontier call for this document is in flight: a second delivery of
    # its task (after the broker's visibility timeout) leaves it to the first.
    frontier_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Batch API batch that carries this document's frontier request (batch mode);
    # cleared when its line is recorded, so a line is recorded once.
    frontier_batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("frontier_batches.id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


def state_in(states: Iterable[str]) -> ColumnElement[bool]:
    """The test that documents named by id are (still) in one of ``states``.

    Wrapped in COALESCE so that Postgres can never answer it from the partial index on
    unsettled documents: with statistics that saw few of them (taken before a burst was
    submitted, or never), the planner read the whole backlog through that index and
    hash-joined it to a task's ids, on every task, and each task cost more the deeper
    the queue. Looked up by id through the primary key, a task costs the same whatever
    the backlog. The reconciliation sweep's search for unsettled documents, which wants
    that index, tests the column itself."""
    return func.coalesce(Document.state, "").in_([str(state) for state in states])


class Prediction(Base):
    """One model's answer for one document; at most one per (document, stage)."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("document_id", "stage", name="uq_predictions_document_stage"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    # NULL: the none outcome of an open-set task (the document fits none of the labels).
    label: Mapped[str | None] = mapped_column(String(255))
    confidence: Mapped[float | None] = mapped_column(Float)
    # The SLM's decision under the policy in force (per-label thresholds included).
    escalated: Mapped[bool | None] = mapped_column(Boolean)
    # Why the SLM escalated: EscalationReason; NULL when it kept the document.
    escalation_reason: Mapped[str | None] = mapped_column(String(16))
    # How unlike the model's training set the document is (models.familiarity), and
    # whether that passed the model's threshold; NULL without a familiarity file.
    unfamiliarity: Mapped[float | None] = mapped_column(Float)
    unfamiliar: Mapped[bool | None] = mapped_column(Boolean)
    distribution: Mapped[dict[str, float] | None] = mapped_column(Json)
    model: Mapped[str] = mapped_column(String(255))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EscalationReason(enum.StrEnum):
    """Why the SLM sent a document to the frontier."""

    CONFIDENCE = "confidence"  # its confidence was under the threshold
    UNFAMILIAR = "unfamiliar"  # sure, but unlike anything the model was trained on


class BatchState(enum.StrEnum):
    """Where a Batch API batch is in its life."""

    PREPARING = "preparing"  # its documents are assigned; not yet created at the provider
    SUBMITTED = "submitted"  # created at the provider; polled until it ends
    RECORDED = "recorded"  # every line recorded (or sent back to be batched again)


class FrontierBatch(Base):
    """One Batch API batch of escalations (``SHIFTDOWN_FRONTIER_MODE=batch``)."""

    __tablename__ = "frontier_batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.PREPARING)
    provider_batch_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    input_file_id: Mapped[str | None] = mapped_column(String(255))
    provider_status: Mapped[str | None] = mapped_column(String(32))
    requests: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FrontierCall(Base):
    """Every attempt at the frontier endpoint, billed or not."""

    __tablename__ = "frontier_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_format: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # Prompt tokens the provider served from its cache (priced at the cached-input rate).
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Labels a narrowed request offered (the SLM's top k); NULL: the whole taxonomy.
    offered: Mapped[int | None] = mapped_column(Integer)
    # The Batch API batch the call went in (NULL: a synchronous call).
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("frontier_batches.id"))
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InputError(Base):
    """An input record that was rejected, with its line number and the reason."""

    __tablename__ = "input_errors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ResultOutbox(Base):
    """A settled document whose result is owed to the Redis results stream
    (``SHIFTDOWN_RESULTS_STREAM``): written with the settlement, deleted once appended."""

    __tablename__ = "result_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class TeacherExample(Base):
    """A labelled example for training: imported, or labelled by the frontier model."""

    __tablename__ = "teacher_examples"
    __table_args__ = (
        UniqueConstraint("task_name", "text_sha256", name="uq_teacher_examples_task_text"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_name: Mapped[str] = mapped_column(ForeignKey("tasks.name"), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    # An outcome: a label, or NONE_LABEL on an open-set task (what the SLM learns).
    label: Mapped[str] = mapped_column(String(255))
    # "import", "frontier" (teach), "escalation" or "audit" (the cascade's own calls)
    source: Mapped[str] = mapped_column(String(16))
    frontier_call_id: Mapped[int | None] = mapped_column(ForeignKey("frontier_calls.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FrontierRecovery(Base):
    """Where the recovery pass after a frontier outage stands (``workers.frontier_recovery``),
    one row shared by every worker, whose passes take turns under an advisory lock."""

    __tablename__ = "frontier_recovery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The parked document last sent to learn whether the frontier answers again.
    probe_id: Mapped[int | None] = mapped_column(BigInteger)
    # The id range of the last chunk of parked documents sent once it answered.
    chunk_from: Mapped[int | None] = mapped_column(BigInteger)
    chunk_to: Mapped[int | None] = mapped_column(BigInteger)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
