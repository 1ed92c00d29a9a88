"""``shiftdown export``: merge a model directory's LoRA adapter into merged GGUFs."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import handle_errors
from shiftdown.manifest import ModelManifest


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--serve",
    type=click.Choice(["adapter", "f16", "q8_0", "q4_0"]),
    default=None,
    help="Also make this what `--model DIR` serves.",
)
@handle_errors
def export(model_dir: Path, serve: str | None) -> None:
    """Write MODEL_DIR/model-{f16,q8_0,q4_0}.gguf from its base + adapter (needs [train])."""
    from models.gguf_export import merge_model_dir

    files = merge_model_dir(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = ModelManifest.load(manifest_path).updated(merged=files, serve=serve)
    manifest.write(manifest_path)
    click.echo(", ".join(f"{kind}: {model_dir / name}" for kind, name in files.items()))
