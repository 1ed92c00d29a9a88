"""``shiftdown models``: the registry of model versions per task."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.common import ensure_schema, handle_errors, make_served
from cli.options import task_option
from models.registry import (
    find_version,
    model_name,
    promote,
    resolve_model,
    rollback,
    version_number,
)
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import ModelVersion, Task
from shiftdown.settings import get_settings


def _task(session: Session, name: str | None) -> Task:
    task = session.get(Task, name or get_settings().task)
    if task is None:
        raise ConfigError(f"no task {name or get_settings().task!r}")
    return task


def _version_number(ref: str) -> int:
    number = version_number(ref)
    if number is None:
        raise ConfigError(f"{ref!r} is not a version number (e.g. 3 or v3)")
    return number


@click.group("models")
def models_group() -> None:
    """Model versions: list, show, register, promote, roll back."""


@models_group.command("list")
@task_option
@handle_errors
def list_models(task_name: str | None) -> None:
    """Every version of the task, the promoted one marked."""
    ensure_schema()
    table = Table()
    for column in ("", "version", "model", "adapter", "accuracy", "registered"):
        table.add_column(column)
    with session_scope() as session:
        task = _task(session, task_name)
        for v in session.scalars(
            select(ModelVersion)
            .where(ModelVersion.task_name == task.name)
            .order_by(ModelVersion.version)
        ):
            evaluation = v.read_manifest().evaluation or {}
            accuracy = evaluation.get("accuracy")
            table.add_row(
                "*" if v.id == task.model_version_id else "",
                f"v{v.version}",
                model_name(v),
                "yes" if v.adapter_path else "",
                f"{100 * accuracy:.1f} %" if accuracy is not None else "-",
                f"{v.created_at:%Y-%m-%d %H:%M}",
            )
    Console().print(table)


@models_group.command("show")
@click.argument("version")
@task_option
@handle_errors
def show(version: str, task_name: str | None) -> None:
    """A version's files and manifest, as JSON."""
    ensure_schema()
    with session_scope() as session:
        v = find_version(session, _task(session, task_name), _version_number(version))
        data = {
            "version": v.version,
            "task": v.task_name,
            "gguf_path": v.gguf_path,
            "adapter_path": v.adapter_path,
            "created_at": str(v.created_at),
            "promoted_at": str(v.promoted_at) if v.promoted_at else None,
            "manifest": v.manifest,
        }
    click.echo(json.dumps(data, indent=2))


@models_group.command("register")
@click.argument("model")
@task_option
@handle_errors
def register_model(model: str, task_name: str | None) -> None:
    """Register MODEL (a GGUF or a `shiftdown finetune` directory) without promoting it."""
    ensure_schema()
    with session_scope() as session:
        task = _task(session, task_name)
        v = resolve_model(session, task, model, get_settings().model_path)
        click.echo(f"registered v{v.version}")
        files = (v.gguf_path, v.adapter_path)
    make_served(*files)


@models_group.command("promote")
@click.argument("version")
@task_option
@handle_errors
def promote_model(version: str, task_name: str | None) -> None:
    """Serve VERSION for new runs of the task."""
    ensure_schema()
    with session_scope() as session:
        task = _task(session, task_name)
        promote(session, task, find_version(session, task, _version_number(version)))
    click.echo(f"task {task.name} now serves v{_version_number(version)}")


@models_group.command("rollback")
@task_option
@handle_errors
def rollback_model(task_name: str | None) -> None:
    """Serve again the version promoted before the current one."""
    ensure_schema()
    with session_scope() as session:
        v = rollback(session, _task(session, task_name))
        click.echo(f"task {v.task_name} now serves v{v.version}")
