"""A progress bar with rate for submissions whose length is not known in advance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Documents per second so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} docs/s" if speed else "", style="progress.data.speed")


@contextmanager
def progress_bar(
    description: str, total: int | None = None, console: Console | None = None
) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; shows count, rate and (with a total) an ETA on stderr."""
    console = console or Console(stderr=True)
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if total else TextColumn("{task.completed} docs"),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        task_id = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task_id, n)

        yield advance
