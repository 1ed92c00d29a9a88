"""One CLI grammar: every command spells a concept the same way, shared options share
their defaults, and destructive commands ask first. The test walks click's command tree,
so a new command is held to it without being listed here."""

from __future__ import annotations

from collections.abc import Iterator

import click

from cli.main import cli

# Concept: (the spelling every command uses, spellings no visible option may use).
SPELLINGS = {
    "where a record's text is": ("--text-column", {"--text-field", "--text", "--text-col"}),
    "where a record's label is": ("--label-column", {"--label-field", "--label-col"}),
    "where a record's id is": ("--id-column", {"--id-field", "--id-col"}),
    "labelled data to judge on": ("--data", {"--heldout", "--held-out", "--eval-data"}),
    "JSON on stdout": ("--json", {"--report-format", "--as-json", "--output-format"}),
    "which model": ("--model", {"--model-ref", "--model-dir", "--version"}),
    "which task": ("--task", {"--task-name"}),
    "which run": ("--run", {"--run-id"}),
    "a server's address": ("--address", {"--host", "--bind", "--listen"}),
}
# Names whose defaults differ on purpose, and why.
DIFFERENT_DEFAULTS = {
    "--format": "input format in run and submit, output format in report and results",
    "--port": "each server has its own port",
}
DESTRUCTIVE = {("db", "downgrade"), ("escalate",)}


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command under ``group`` with its path."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def problems(root: click.Group) -> list[str]:
    """What breaks the grammar, one line each."""
    found: list[str] = []
    defaults: dict[str, dict[object, list[str]]] = {}
    for path, command in commands(root):
        where = " ".join(path)
        names = set()
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            for name in param.opts + param.secondary_opts:
                names.add(name)
                for concept, (spelling, others) in SPELLINGS.items():
                    if name in others:
                        found.append(
                            f"{where}: {name} for {concept}; every command says {spelling}"
                        )
            required = param.required or param.is_flag
            if param.opts[0] not in DIFFERENT_DEFAULTS and not required:
                defaults.setdefault(param.opts[0], {}).setdefault(repr(param.default), []).append(
                    where
                )
        if path in DESTRUCTIVE and "--yes" not in names:
            found.append(f"{where}: destructive, and no confirmation (--yes to skip it)")
    for name, seen in defaults.items():
        if len(seen) > 1:
            found.append(f"{name} has different defaults: {seen}")
    return found


def test_every_command_keeps_the_grammar() -> None:
    assert problems(cli) == []


def test_a_second_spelling_is_caught() -> None:
    @click.group()
    def planted() -> None:
        pass

    for name, command in cli.commands.items():
        planted.add_command(command, name)

    @planted.command("extra")
    @click.option("--text-field", default="text")
    @click.option("--valid-frac", default=0.2)
    def extra(text_field: str, valid_frac: float) -> None:
        pass

    found = problems(planted)
    assert any(line.startswith("extra: --text-field") for line in found), found
    assert any(line.startswith("--valid-frac has different defaults") for line in found), found


def test_an_old_spelling_still_works_hidden() -> None:
    from click.testing import CliRunner

    help_text = CliRunner().invoke(cli, ["submit", "--help"]).output
    assert "--text-column" in help_text and "--text-field" not in help_text
    result = CliRunner().invoke(cli, ["retrain", "--heldout", "/nonexistent.csv"])
    # Parsed as --data: the same check of the path.
    assert "/nonexistent.csv" in result.output and "does not exist" in result.output


def test_a_downgrade_asks_first() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["db", "downgrade", "base"], input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
