"""``python -m cli`` is the ``shiftdown`` command."""

from cli.main import cli

cli()
