"""The docs: the reference pages have something to show for every setting, command and
option; the site builds in strict mode; and every example marked runnable runs.

An example is a fenced ``bash`` or ``sql`` block in README.md or docs/ whose line before
the fence is ``<!-- runnable -->`` (or ``<!-- runnable: skip REASON -->``: reported as a
skip with that reason). They run in order, README first, in one scratch folder on the
embedded defaults (a SQLite file there, no broker, no frontier), so that the quick
start's run is the one the report commands and the SQL views read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from cli.main import cli
from cli.reference import commands_markdown, settings_markdown, undocumented
from tests.conftest import ROOT

BLOCK = re.compile(
    r"^<!-- runnable(?:: skip (?P<skip>[^\n]*?))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Example:
    """One marked block."""

    source: str
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.source}:{self.line}"


def pages() -> list[Path]:
    """README, then the docs in the site's navigation order."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    names: list[str] = []

    def visit(items: list[object]) -> None:
        for item in items:
            for value in item.values() if isinstance(item, dict) else [item]:
                if isinstance(value, list):
                    visit(value)
                else:
                    names.append(str(value))

    visit(nav)
    return [ROOT / "README.md", *(ROOT / "docs" / n for n in names)]


def examples(paths: list[Path] | None = None) -> list[Example]:
    """Every marked block of ``paths`` (default: README and the docs), in order."""
    found = []
    for path in paths or pages():
        content = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(content):
            found.append(
                Example(
                    str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                    content.count("\n", 0, m.start()) + 1,
                    m.group("lang"),
                    m.group("code"),
                    m.group("skip"),
                )
            )
    return found


def test_every_setting_command_and_option_has_a_description() -> None:
    assert undocumented(cli) == []
    assert "`SHIFTDOWN_SERVE_TYPE`" in settings_markdown()
    reference = commands_markdown(cli)
    assert "## `shiftdown policy set`" in reference and "`--none-recall FLOAT RANGE`" in reference


def test_the_committed_reference_pages_are_current() -> None:
    # Read on GitHub as committed: `python -m cli.reference` rewrites them.
    from cli.reference import PAGES, fill, reference_pages

    pages = reference_pages(cli)
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "<!-- end generated -->" in text, page
        assert fill(text, pages) == text, f"{page} is out of date: run python -m cli.reference"


def test_a_missing_description_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    @click.command()
    @click.option("--colour")
    def paint(colour: str) -> None:
        pass

    group = click.Group(commands={"paint": paint})
    assert undocumented(group) == ["command paint", "option --colour of paint"]


def test_the_docs_build_in_strict_mode(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the dev extra installs it)")
    site = tmp_path / "site"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    settings = (site / "settings" / "index.html").read_text(encoding="utf-8")
    assert "SHIFTDOWN_DATABASE_URL" in settings and "generated:" not in settings
    commands = (site / "commands" / "index.html").read_text(encoding="utf-8")
    assert "shiftdown policy set" in commands


def test_the_marked_examples_are_found_and_cover_the_quick_start(tmp_path: Path) -> None:
    found = examples()
    runnable = [e for e in found if e.skip is None]
    assert runnable[0].source == "README.md" and "shiftdown finetune" in runnable[0].code
    assert any(e.lang == "sql" for e in runnable)
    assert any("report" in e.code for e in runnable[1:])
    assert all(e.skip for e in found if "docker compose" in e.code or "GPU_LAYERS" in e.code)
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable: skip no GPU here -->\n```bash\nnvidia-smi\n```\n")
    assert examples([page]) == [Example(str(page), 1, "bash", "nvidia-smi\n", "no GPU here")]


def test_every_command_block_a_newcomer_reads_first_is_run_or_says_why_not() -> None:
    # README and Getting started: a bash block is marked runnable, or skipped with the
    # reason, never left untested by omission.
    fence = re.compile(r"^(?P<mark><!-- runnable[^\n]*-->\n)?```bash\n", re.MULTILINE)
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        content = page.read_text(encoding="utf-8")
        unmarked = [
            content.count("\n", 0, m.start()) + 1 for m in fence.finditer(content) if not m["mark"]
        ]
        assert unmarked == [], f"{page.name}: bash blocks without a runnable marker at {unmarked}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The folder and environment the examples run in: the embedded defaults."""
    folder = tmp_path_factory.mktemp("examples")
    (folder / "demo").symlink_to(ROOT / "demo")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHIFTDOWN_", "OPENAI_")) or k.startswith("SHIFTDOWN_TEST_")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SHIFTDOWN_DATABASE_URL"] = f"sqlite:///{folder / 'shiftdown.db'}"
    env["SHIFTDOWN_N_THREADS"] = "2"
    return {"folder": folder, "env": env}


@pytest.mark.slow
@pytest.mark.parametrize("example", examples(), ids=lambda e: e.id)
def test_the_example_runs(example: Example, scratch: dict[str, object]) -> None:
    if example.skip:
        pytest.skip(example.skip)
    folder = scratch["folder"]
    assert isinstance(folder, Path)
    if example.lang == "bash":
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", example.code],
            cwd=folder,
            env=scratch["env"],  # type: ignore[arg-type]
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"{example.id}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
        return
    assert example.lang == "sql", f"{example.id}: only bash and sql examples run"
    engine = create_engine(f"sqlite:///{folder / 'shiftdown.db'}")
    statements = [s for s in re.sub(r"--[^\n]*", "", example.code).split(";") if s.strip()]
    # Each query must run against the schema the quick start made (a renamed view or
    # column fails here); the run it reads has documents, and no frontier calls.
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement)).all()
        labelled = conn.execute(text("SELECT count(*) FROM document_labels")).scalar()
    engine.dispose()
    assert statements and labelled


@pytest.mark.slow
def test_the_demo_recipe_runs_and_what_the_docs_say_next_finds_it(
    scratch: dict[str, object],
) -> None:
    # `make demo`'s own command (from the Makefile, its venv for $(BIN)), then the bare
    # `shiftdown report` the docs suggest next: both on the default store.
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\ndemo: install\n")[1]
    command = " ".join(
        line.strip().rstrip("\\")
        for line in recipe.split("\n\n")[0].splitlines()
        if line.startswith("\t") or line.startswith("  ")
    ).replace("$(BIN)/", f"{Path(sys.executable).parent}/")
    folder = scratch["folder"]
    assert isinstance(folder, Path)
    work = folder / "demo-run"
    work.mkdir()
    (work / "demo").symlink_to(ROOT / "demo")
    env = {k: v for k, v in scratch["env"].items() if k != "SHIFTDOWN_DATABASE_URL"}  # type: ignore[attr-defined]
    ran = subprocess.run(
        ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = subprocess.run(
        ["shiftdown", "report", "--json"], cwd=work, env=env, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-3000:]
    import json

    assert json.loads(report.stdout)["documents"] == 500
