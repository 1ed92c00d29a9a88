"""The docs' reference pages, generated: every setting from ``shiftdown.settings`` (its
environment variable, default and description) and every command from the click tree
(its usage, help and options), so that neither is copied by hand.

The generated Markdown is committed between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` in ``docs/commands.md`` and ``docs/settings.md``, so that the
pages read on GitHub too (as simonw/llm keeps its docs with cog). After changing a
setting or a command, ``python -m cli.reference`` rewrites them; a test fails while they
are out of date, and another when a setting or command has no description. The docs
build fills them afresh as well (``docs/hooks.py``)."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
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


# A generated block: its start marker (naming the page part), the Markdown, its end.
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)
PAGES = ("docs/commands.md", "docs/settings.md")


def fill(markdown: str, pages: dict[str, str]) -> str:
    """``markdown`` with every generated block's content replaced by ``pages``'s."""
    return BLOCK.sub(
        lambda m: f"{m.group(1)}\n{pages[m.group(2)].strip()}\n\n{m.group(4)}", markdown
    )


def main() -> None:
    """Rewrite the reference pages in place (``--check``: only say which are stale)."""
    from cli.main import cli

    root = Path(__file__).resolve().parent.parent
    pages = reference_pages(cli)
    stale = []
    for page in PAGES:
        path = root / page
        text = path.read_text(encoding="utf-8")
        filled = fill(text, pages)
        if filled != text:
            stale.append(page)
            if "--check" not in sys.argv:
                path.write_text(filled, encoding="utf-8")
    verb = "out of date" if "--check" in sys.argv else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "the reference pages are current")
    sys.exit(1 if stale and "--check" in sys.argv else 0)


if __name__ == "__main__":
    main()
