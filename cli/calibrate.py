"""``shiftdown calibrate``: fit temperature scaling for a model version on held-out data."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cli.common import ensure_schema, handle_errors
from cli.options import heldout_options
from cli.progress import progress_bar
from models.calibration import fit_temperature, nll
from models.evaluate import expected_calibration_error
from models.registry import update_manifest
from models.scoring import HeldoutData, score_version
from shiftdown.db import session_scope
from shiftdown.schema import ModelVersion


@click.command()
@heldout_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@handle_errors
def calibrate(
    held: HeldoutData,
    as_json: bool,
) -> None:
    """Fit the temperature that makes confidences match held-out accuracy, and store it
    with the model version (workers apply it from then on).

    A policy solved at the old temperature no longer holds and is removed.
    """
    ensure_schema()
    scored = score_version(held, progress_bar)
    sc = scored.scores
    temperature = fit_temperature(sc.logits, sc.gold)
    figures: dict[str, Any] = {
        "method": "temperature",
        "temperature": temperature,
        "documents": len(sc.gold),
        "data": str(scored.data),
        "ece_before": round(expected_calibration_error(sc.confidence(1.0), sc.correct), 4),
        "ece_after": round(expected_calibration_error(sc.confidence(temperature), sc.correct), 4),
        "nll_before": round(nll(sc.logits, sc.gold, 1.0), 4),
        "nll_after": round(nll(sc.logits, sc.gold, temperature), 4),
        "accuracy": round(float(sc.correct.mean()), 4),
    }
    had_policy = scored.manifest.policy is not None
    with session_scope() as session:
        update_manifest(
            session,
            session.get_one(ModelVersion, scored.version_id),
            temperature=temperature,
            calibration=figures,
            policy=None,
        )
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        table = Table(title=f"{scored.name}: temperature scaling on {len(sc.gold)} held-out")
        table.add_column("measure")
        table.add_column("T = 1", justify="right")
        table.add_column(f"T = {temperature:g}", justify="right")
        table.add_row("ECE", f"{figures['ece_before']:.4f}", f"{figures['ece_after']:.4f}")
        table.add_row("NLL", f"{figures['nll_before']:.4f}", f"{figures['nll_after']:.4f}")
        acc = f"{100 * figures['accuracy']:.2f} %"
        table.add_row("accuracy (unchanged)", acc, acc)
        Console().print(table)
    if had_policy:
        click.echo(
            "the escalation policy was solved at the old temperature and is removed: "
            "run `shiftdown policy set` again",
            err=True,
        )
