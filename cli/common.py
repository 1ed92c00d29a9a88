"""What several commands share: schema readiness, error display, input options."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

import migrations
from shiftdown.errors import ShiftdownError
from shiftdown.settings import get_settings
from shiftdown.taxonomy import Taxonomy

F = TypeVar("F", bound=Callable[..., Any])


def ensure_schema() -> None:
    """Migrate an embedded SQLite store; refuse to run on an out-of-date server database."""
    url = get_settings().database_url
    if url.startswith("sqlite"):
        migrations.upgrade(url)
    elif not migrations.is_current(url):
        raise click.ClickException("the database schema is not current: run `shiftdown db upgrade`")


def make_served(gguf_path: str, adapter_path: str | None) -> None:
    """Make now the merged GGUF a model with an adapter is served as, so no worker waits.

    Says where it is; a model with no adapter, or served as one, needs nothing.
    """
    from models.served import served_files

    serve_type = get_settings().serve_type
    if adapter_path is None or serve_type == "adapter":
        return
    started = time.perf_counter()
    path, _ = served_files(gguf_path, adapter_path, serve_type)
    took = time.perf_counter() - started
    click.echo(f"served as {serve_type}: {path} ({took:.1f} s)", err=True)


def handle_errors(func: F) -> F:
    """Show shiftdown's own errors as one clear line instead of a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShiftdownError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def load_taxonomy(path: str | None) -> Taxonomy | None:
    """The taxonomy file, if one was given."""
    return Taxonomy.from_file(path) if path else None


@contextmanager
def open_source(source: str) -> Iterator[BinaryIO]:
    """The input as a binary stream (``-`` is stdin)."""
    if source == "-":
        yield sys.stdin.buffer
    else:
        path = Path(source)
        if not path.is_file():
            raise click.BadParameter(f"no such file: {source}", param_hint="SOURCE")
        with path.open("rb") as stream:
            yield stream
