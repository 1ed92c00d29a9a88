"""Entry point of the ``shiftdown`` command."""

from __future__ import annotations

import logging

import click

from cli.batches import batches
from cli.calibrate import calibrate
from cli.close import close
from cli.db import db
from cli.escalate import escalate
from cli.eval import eval_command
from cli.export import export
from cli.familiarity import familiarity
from cli.finetune import finetune
from cli.flower import flower
from cli.ingest import ingest
from cli.metrics import metrics
from cli.models import models_group
from cli.policy import policy
from cli.reconcile import reconcile
from cli.report import report
from cli.results import results
from cli.retrain import retrain
from cli.run import run
from cli.status import status, wait
from cli.submit import submit
from cli.tasks import tasks
from cli.teach import teach


@click.group()
@click.version_option(package_name="shiftdown")
@click.option("-v", "--verbose", is_flag=True, help="Log progress of every stage.")
def cli(verbose: bool) -> None:
    """shiftdown: classify with a small fine-tuned model, escalate only what it is unsure of."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


for command in (
    run,
    submit,
    ingest,
    close,
    report,
    results,
    status,
    wait,
    metrics,
    flower,
    escalate,
    batches,
    reconcile,
    eval_command,
    calibrate,
    policy,
    retrain,
    finetune,
    familiarity,
    export,
    teach,
    models_group,
    tasks,
    db,
):
    cli.add_command(command)
