"""``shiftdown metrics``: a Prometheus exporter of the store and the queues."""

from __future__ import annotations

import time

import click
from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from cli.common import ensure_schema, handle_errors
from workers.metrics import StoreCollector


def registry() -> CollectorRegistry:
    """A registry holding shiftdown's collector only."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(StoreCollector())
    return reg


@click.command()
@click.option("--port", default=9808, show_default=True, help="Port of the metrics endpoint.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@handle_errors
def metrics(port: int, address: str) -> None:
    """Serve /metrics (Prometheus text format) until interrupted."""
    ensure_schema()
    start_http_server(port, addr=address, registry=registry())
    click.echo(f"serving metrics on http://{address}:{port}/metrics", err=True)
    while True:
        time.sleep(3600)
