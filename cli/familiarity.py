"""``shiftdown familiarity``: the unfamiliarity score a model escalates unlike documents
with, fitted from the model's own hidden states (``models.familiarity``)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import handle_errors
from cli.progress import progress_bar
from models.familiarity import DEFAULT_FALSE_FLAG_RATE, DEFAULT_METHOD, METHODS, Method
from models.teacher import read_labelled
from shiftdown.errors import ModelError
from shiftdown.manifest import FamiliarityRef, ModelManifest
from shiftdown.taxonomy import Taxonomy

method_option = click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="The score: cosine distance to the nearest training document (knn), or the "
    "Mahalanobis distance to the nearest label mean (mahalanobis).",
)
false_flag_option = click.option(
    "--false-flag-rate",
    type=click.FloatRange(0.001, 0.5),
    default=DEFAULT_FALSE_FLAG_RATE,
    show_default=True,
    help="Share of known held-out documents the threshold flags as unfamiliar.",
)


def describe(ref: FamiliarityRef) -> str:
    """One line on a fitted score."""
    held = "held-out" if ref.calibration == "heldout" else "out-of-fold training"
    return (
        f"familiarity: {ref.method} over {ref.bank or 'the label means of'} training "
        f"documents; threshold {ref.threshold:.4f} flags {ref.false_flag_rate:.1%} of "
        f"{ref.calibrated_on} {held} documents"
    )


def fit_after_training(
    out_dir: Path,
    train: list[tuple[str, str]],
    heldout: list[tuple[str, str]],
    method: Method,
    false_flag_rate: float,
    warn_only: bool = False,
) -> None:
    """Fit and store the score of a model, saying what it found. With ``warn_only``
    (a model just trained), a score that cannot be fitted (too few documents) is said
    and left out: the model is trained and serves without one."""
    from models.familiarity_fit import fit_model_dir, fit_runtime_options

    try:
        with progress_bar("fitting familiarity", total=len(train) + len(heldout)) as advance:
            ref = fit_model_dir(
                out_dir, train, heldout, fit_runtime_options(), method, false_flag_rate, advance
            )
    except ModelError as exc:
        if not warn_only:
            raise
        click.echo(f"familiarity: not fitted ({exc}); the model serves without it", err=True)
        return
    click.echo(describe(ref), err=True)


@click.group("familiarity")
def familiarity() -> None:
    """The unfamiliarity score: documents unlike anything a model was trained on are
    escalated whatever its confidence."""


@familiarity.command("fit")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The teacher set the model was trained on (CSV or JSONL); its held-out split "
    "is left out of the bank and fits the threshold.",
)
@click.option(
    "--taxonomy",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Label file (JSON/YAML) the model was trained for.",
)
@click.option("--text-column", default="text", show_default=True, help="Column of the text.")
@click.option("--label-column", default="label", show_default=True, help="Column of the label.")
@method_option
@false_flag_option
@click.option(
    "--limit", type=int, default=None, help="Fit on a seeded sample of N training documents."
)
@handle_errors
def fit_command(
    model_dir: Path,
    data_path: Path,
    taxonomy: str,
    text_column: str,
    label_column: str,
    method: Method,
    false_flag_rate: float,
    limit: int | None,
) -> None:
    """Fit MODEL_DIR's unfamiliarity score on its teacher set, for a model trained
    before `finetune` fitted one (or to refit it with another method or rate)."""
    import random

    manifest = ModelManifest.load(model_dir / "manifest.json")
    tax = Taxonomy.from_file(taxonomy)
    examples = read_labelled(data_path, text_column, label_column, tax)
    heldout = (
        read_labelled(model_dir / manifest.heldout.file, "text", "label", tax)
        if manifest.heldout
        else []
    )
    held_texts = {text for text, _ in heldout}
    train = [ex for ex in examples if ex[0] not in held_texts]
    if limit is not None and limit < len(train):
        train = random.Random(0).sample(train, limit)
    click.echo(f"fitting on {len(train)} training documents, {len(heldout)} held out", err=True)
    fit_after_training(model_dir, train, heldout, method, false_flag_rate)
