"""``shiftdown finetune``: LoRA fine-tune of the base SLM on a teacher set."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import handle_errors, make_served
from cli.familiarity import false_flag_option, fit_after_training
from cli.progress import progress_bar
from models.base import default_gguf_path
from models.familiarity import DEFAULT_METHOD, METHODS
from models.teacher import read_labelled
from shiftdown.taxonomy import Taxonomy


@click.command()
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Teacher set (CSV or JSONL).",
)
@click.option(
    "--taxonomy",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Label file (JSON/YAML); open_set: true adds the none outcome.",
)
@click.option("--text-column", default="text", show_default=True, help="Column of the text.")
@click.option("--label-column", default="label", show_default=True, help="Column of the label.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for adapter.gguf and manifest.json.",
)
@click.option(
    "--base",
    "base_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Base GGUF (default: bundled SmolLM2-135M-Instruct).",
)
@click.option(
    "--valid-frac",
    default=0.05,
    show_default=True,
    help="Held-out share (stratified, seeded), not trained on.",
)
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Train on the first N examples of the seeded split only.",
)
@click.option("--epochs", default=1.0, show_default=True, help="Passes over the training split.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--rank", default=16, show_default=True, help="LoRA rank.")
@click.option("--batch-size", default=16, show_default=True, help="Examples per step.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and training.")
@click.option(
    "--full", is_flag=True, help="Full fine-tune instead of LoRA (serves the merged Q8_0)."
)
@click.option(
    "--merged/--no-merged",
    default=True,
    show_default=True,
    help="Also make the merged GGUF the adapter is served as (SHIFTDOWN_SERVE_TYPE), so "
    "that no worker pays for the merge.",
)
@click.option(
    "--familiarity",
    type=click.Choice([*METHODS, "off"]),
    default=DEFAULT_METHOD,
    show_default=True,
    help="Fit the unfamiliarity score on the training split (documents unlike all of it "
    "are escalated), or not (off).",
)
@false_flag_option
@handle_errors
def finetune(
    data_path: Path,
    taxonomy: str,
    text_column: str,
    label_column: str,
    out_dir: Path,
    base_path: Path | None,
    valid_frac: float,
    limit: int | None,
    epochs: float,
    lr: float,
    rank: int,
    batch_size: int,
    seed: int,
    full: bool,
    merged: bool,
    familiarity: str,
    false_flag_rate: float,
) -> None:
    """Fine-tune the base SLM on labelled examples (needs `pip install shiftdown[train]`).

    Writes OUT/manifest.json with the LoRA adapter (adapter.gguf), ready for `--model OUT`
    and served merged (OUT/.served/), or with --full the model's own GGUFs
    (model-f16.gguf, model-q8_0.gguf, model-q4_0.gguf).
    """
    from models.training.finetune import FinetuneConfig, stratified_split
    from models.training.finetune import finetune as train

    tax = Taxonomy.from_file(taxonomy)
    examples = read_labelled(data_path, text_column, label_column, tax)
    train_set, valid_set = stratified_split(examples, valid_frac, seed)
    if limit is not None:
        train_set = train_set[:limit]
    config = FinetuneConfig(
        lora_rank=rank,
        lora_alpha=2 * rank,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        full=full,
    )
    click.echo(f"training on {len(train_set)} examples, {len(valid_set)} held out", err=True)
    with progress_bar("fine-tuning", total=None) as advance:
        last = [0.0]

        def on_step(step: int, total: int, loss: float) -> None:
            last[0] = 0.9 * last[0] + 0.1 * loss if step > 1 else loss
            advance(1)
            if step % 20 == 0 or step == total:
                click.echo(f"step {step}/{total} loss {last[0]:.4f}", err=True)

        manifest = train(
            base_path or default_gguf_path(),
            train_set,
            tax.outcomes,
            out_dir,
            config,
            on_step,
            heldout=valid_set,
        )
    click.echo(f"wrote {out_dir} ({manifest.train_seconds} s of training)")
    if manifest.base_model is not None:
        click.echo(
            f"base {manifest.base_model.path} ({manifest.base_model.architecture}); "
            f"adapted: {', '.join(manifest.adapted_modules or [])}"
        )
    if merged and manifest.adapter:
        make_served(str(base_path or default_gguf_path()), str(out_dir / manifest.adapter))
    if familiarity != "off":
        fit_after_training(
            out_dir,
            train_set,
            valid_set,
            familiarity,  # type: ignore[arg-type]
            false_flag_rate,
            warn_only=True,
        )
