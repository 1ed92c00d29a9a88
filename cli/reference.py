"""The docs' reference pages, generated: every setting from ``shiftdown.settings`` (its
environment variable, default and description) and every command from the click tree
(its usage, help and options), so that neither is copied by hand. The docs build calls
these (``docs/hooks.py``); a test fails when a setting or command has no description."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import click
from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from shiftdown.settings import Settings


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables a setting is read from."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"SHIFTDOWN_{name.upper()}"]


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, dict | list) and len(str(value)) > 40:
        return "(see `shiftdown/settings.py`)"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_rows() -> Iterator[tuple[str, str, str]]:
    """(variables, default, description) of every setting, in declaration order."""
    for name, field in Settings.model_fields.items():
        variables = ", ".join(f"`{v}`" for v in env_names(name, field))
        yield variables, _default(field), _cell(field.description or "")


def settings_markdown() -> str:
    """The settings table as Markdown."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| {v} | {d} | {m} |" for v, d, m in settings_rows()]
    return "\n".join(lines) + "\n"


def walk(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command under ``group`` with its full name (``shiftdown policy set``)."""
    for name in sorted(getattr(group, "commands", {})):
        command = group.commands[name]  # type: ignore[attr-defined]
        full = (*path, name)
        yield " ".join(full), command
        yield from walk(command, full)


def _option_rows(command: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for param in command.params:
        # Arguments are in the usage line.
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        flags, help_text = record
        rows.append(f"| `{_cell(flags)}` | {_cell(help_text)} |")
    return rows


def commands_markdown(root: click.Command, prog: str = "shiftdown") -> str:
    """Every command's usage, help text and options as Markdown."""
    out: list[str] = []
    for name, command in walk(root):
        ctx = click.Context(command, info_name=f"{prog} {name}")
        out += [f"## `{prog} {name}`", "", "```text", command.get_usage(ctx), "```", ""]
        out += [inspect.cleandoc(command.help or ""), ""]
        rows = _option_rows(command, ctx)
        if rows:
            out += ["| option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(out)


def undocumented(root: click.Command) -> list[str]:
    """Settings without a description, commands without help, and options without help
    text: what the reference pages would show empty."""
    missing = [
        f"setting {name}"
        for name, field in Settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    for name, command in walk(root):
        if not (command.help or "").strip():
            missing.append(f"command {name}")
        for param in command.params:
            if isinstance(param, click.Option) and not param.help and not param.hidden:
                missing.append(f"option {' '.join(param.opts)} of {name}")
    return missing


def reference_pages(root: Any) -> dict[str, str]:
    """The generated pages' Markdown by marker name (the docs hook fills them in)."""
    return {"settings": settings_markdown(), "commands": commands_markdown(root)}
