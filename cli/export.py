"""``shiftdown export``: merge a model directory's LoRA adapter into GGUFs of chosen types."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import handle_errors
from shiftdown.manifest import ModelManifest
from shiftdown.settings import SERVE_TYPES

MERGED_TYPES = [t for t in SERVE_TYPES if t != "adapter"]


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--type",
    "kinds",
    type=click.Choice(MERGED_TYPES),
    multiple=True,
    help="llama.cpp type to write (repeatable; default: f16, q8_0 and q4_0).",
)
@click.option(
    "--serve",
    type=click.Choice(SERVE_TYPES),
    default=None,
    help="Pin MODEL_DIR to serve this exported file wherever it is named (a `--model` "
    "option, a registered version), whatever SHIFTDOWN_SERVE_TYPE says; `adapter` "
    "removes the pin.",
)
@handle_errors
def export(model_dir: Path, kinds: tuple[str, ...], serve: str | None) -> None:
    """Write MODEL_DIR/model-<type>.gguf: its base + adapter merged (no torch needed).

    The workers make and cache the form they serve on their own (SHIFTDOWN_SERVE_TYPE);
    export is for files to ship elsewhere, or to pin what a model directory serves.
    """
    from models.merge import merge
    from models.registry import load_model_dir

    base, adapter, _ = load_model_dir(model_dir, as_trained=True)
    if adapter is None:
        raise click.ClickException(f"{model_dir} serves no adapter to merge")
    wanted = list(kinds) or ["f16", "q8_0", "q4_0"]
    if serve not in (None, "adapter") and serve not in wanted:
        wanted.append(serve)
    files = {}
    for kind in wanted:
        files[kind] = f"model-{kind}.gguf"
        started = time.perf_counter()
        merge(base, adapter, model_dir / files[kind], kind)
        took = time.perf_counter() - started
        click.echo(f"{kind}: {model_dir / files[kind]} ({took:.1f} s)")
    manifest_path = model_dir / "manifest.json"
    manifest = ModelManifest.load(manifest_path)
    pin = manifest.serve if serve is None else (None if serve == "adapter" else serve)
    manifest = manifest.updated(merged={**(manifest.merged or {}), **files}, serve=pin)
    manifest.write(manifest_path)
