"""``shiftdown flower``: Flower on the shiftdown app, with basic auth from settings."""

from __future__ import annotations

import os
import sys

import click

from shiftdown.settings import get_settings


@click.command()
@click.option("--port", default=5555, show_default=True, help="Port to serve Flower on.")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (as `metrics`: this machine only; 0.0.0.0 in a container, "
    "behind the basic auth the settings give).",
)
def flower(port: int, address: str) -> None:
    """Run Flower for the slm and frontier queues (needs SHIFTDOWN_FLOWER_PASSWORD)."""
    s = get_settings()
    if s.flower_password is None or not s.flower_password.get_secret_value():
        raise click.ClickException("set SHIFTDOWN_FLOWER_PASSWORD: Flower never runs without auth")
    # Through Flower's own environment option, so the password is not in the process list.
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password.get_secret_value()}",
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]
    os.execvpe(sys.executable, argv, env)
