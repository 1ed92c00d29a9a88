"""Click options several commands share, declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.common import load_taxonomy
from models.policy import KEPT_ACCURACY, MAX_ESCALATION, MAX_USD_PER_1K, Target
from models.scoring import HeldoutData
from producers.readers import Format

F = TypeVar("F", bound=Callable[..., Any])


def renamed_option(name: str, old: str, dest: str, **attrs: Any) -> Callable[[F], F]:
    """``click.option(name, dest, **attrs)`` that still takes its ``old`` spelling, hidden
    (kept for a release, so that scripts written against it keep working). The one
    spelling per concept is what tests/test_cli_grammar.py holds every command to."""

    def decorate(func: F) -> F:
        legacy = f"{dest}__{old.lstrip('-').replace('-', '_')}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(legacy)
            if value is not None:
                kwargs[dest] = value
            return func(*args, **kwargs)

        hidden = click.option(old, legacy, hidden=True, default=None, type=attrs.get("type"))
        return click.option(name, dest, **attrs)(hidden(wrapper))  # type: ignore[return-value]

    return decorate


def text_column_option(
    help: str = "JSON field or CSV column holding the text.",
) -> Callable[[F], F]:
    """``--text-column``: where a record's text is (once ``--text-field`` in some commands)."""
    return renamed_option(
        "--text-column", "--text-field", "text_column", default="text", show_default=True, help=help
    )


def id_column_option(help: str) -> Callable[[F], F]:
    """``--id-column``: where a record's id is (once ``--id-field``)."""
    return renamed_option(
        "--id-column", "--id-field", "id_column", default="id", show_default=True, help=help
    )


task_option = click.option(
    "--task", "task_name", default=None, help="Task (default: SHIFTDOWN_TASK)."
)
taxonomy_option = click.option(
    "--taxonomy",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Label file (JSON/YAML); needed when the task is new.",
)
open_set_option = click.option(
    "--open-set/--closed-set",
    "open_set",
    default=None,
    help="Let documents end as none of the labels (open set), or not (default: as the "
    "taxonomy file or the task says).",
)


def model_option(
    help: str = "Version, model directory or GGUF (default: the promoted one).",
) -> Callable[[F], F]:
    """``--model``: which model version a command uses."""
    return click.option("--model", "model_ref", default=None, help=help)


def limit_option(verb: str) -> Callable[[F], F]:
    """``--limit N``: only the first N records."""
    return click.option("--limit", type=int, default=None, help=f"{verb} only the first N.")


@dataclass(frozen=True)
class SourceOptions:
    """What ``run`` and ``submit`` read, for which task and model."""

    source: str
    taxonomy: str | None
    open_set: bool | None
    task_name: str | None
    model_ref: str | None
    fmt: Format
    text_column: str
    id_column: str
    limit: int | None


def input_options(func: F) -> F:
    """Options shared by ``run`` and ``submit``, passed on as one ``src`` argument (a
    SourceOptions)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        names = [f.name for f in fields(SourceOptions)]
        return func(*args, src=SourceOptions(**{n: kwargs.pop(n) for n in names}), **kwargs)

    decorators = [
        click.argument("source", type=click.Path(dir_okay=False, allow_dash=True)),
        taxonomy_option,
        open_set_option,
        task_option,
        model_option("GGUF path, model directory or version (default: the task's promoted model)."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "jsonl", "csv", "text"]),
            default="auto",
            show_default=True,
            help="Input format (auto: from the file name, else the content).",
        ),
        text_column_option(),
        id_column_option("JSON field or CSV column of the document id (default: line number)."),
        limit_option("Submit"),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


def heldout_options(func: F) -> F:
    """Which model, which task and which held-out data, passed on as one ``held``
    argument (a HeldoutData)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fields = {name: kwargs.pop(name) for name in _HELDOUT_FIELDS}
        fields["taxonomy"] = load_taxonomy(fields["taxonomy"])
        return func(*args, held=HeldoutData(**fields), **kwargs)

    decorators = [
        model_option(),
        task_option,
        taxonomy_option,
        click.option(
            "--data",
            "data_path",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Held-out labelled CSV/JSONL (default: the split `finetune` held out).",
        ),
        click.option(
            "--text-column", default="text", show_default=True, help="Column of the text."
        ),
        click.option(
            "--label-column", default="label", show_default=True, help="Column of the label."
        ),
        limit_option("Use"),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


_HELDOUT_FIELDS = (
    "model_ref",
    "task_name",
    "taxonomy",
    "data_path",
    "text_column",
    "label_column",
    "limit",
)


def economics_option(func: F) -> F:
    """How good the frontier is taken to be."""
    return click.option(
        "--frontier-accuracy",
        type=click.FloatRange(0, 1),
        default=1.0,
        show_default=True,
        help="Share of escalated documents the frontier labels right (its measured "
        "agreement with your reference labels).",
    )(func)


_TARGETS = (
    (KEPT_ACCURACY, "--kept-accuracy", click.FloatRange(0, 1), "minimum accuracy on kept"),
    (MAX_ESCALATION, "--max-escalation", click.FloatRange(0, 1), "maximum escalation rate"),
    (MAX_USD_PER_1K, "--max-usd-per-1k", click.FloatRange(0), "maximum $ per 1,000 docs"),
)
TARGET_FLAGS = ", ".join(flag for _, flag, _, _ in _TARGETS)


def target_options(func: F) -> F:
    """The three target options, passed on as one ``target`` argument: a Target, or
    None when none is given (more than one is a usage error)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        chosen = [(kind, v) for kind, *_ in _TARGETS if (v := kwargs.pop(kind)) is not None]
        if len(chosen) > 1:
            raise click.UsageError(f"give one target: {TARGET_FLAGS}")
        return func(*args, target=Target(*chosen[0]) if chosen else None, **kwargs)

    for kind, flag, kind_type, text in reversed(_TARGETS):
        wrapper = click.option(flag, kind, type=kind_type, help=f"Target: {text}.")(wrapper)
    return wrapper  # type: ignore[return-value]
