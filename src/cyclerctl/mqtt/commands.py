"""CLI command: monitor."""

from __future__ import annotations

import asyncio
import os

import typer

DEFAULT_URL = "mqtt://127.0.0.1:1883"


def monitor(
    mqtt: str = typer.Option(None, "--mqtt", help="Broker URL, e.g. mqtt://viewer:PASSWORD@broker.lab:1883 "
                             "(default: $CYCLERCTL_MQTT or mqtt://127.0.0.1:1883)."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot after a short collection window and exit."),
    window: float = typer.Option(2.0, "--window", help="Seconds to collect before the --once snapshot."),
    root: str = typer.Option("cycler/v1", "--root", help="Topic root."),
) -> None:
    """Live terminal view of every channel on a broker. Example: cyclerctl monitor --mqtt mqtt://localhost:1883"""
    from rich.console import Console
    from rich.live import Live

    from ..errors import ConfigError
    from .client import parse_url
    from .monitor import MonitorModel, watch

    url = mqtt or os.environ.get("CYCLERCTL_MQTT") or DEFAULT_URL
    parse_url(url)  # a bad URL is a one-line error before anything starts
    if window <= 0:
        raise ConfigError("--window must be > 0 seconds")
    model = MonitorModel(root)
    console = Console()
    if once:
        asyncio.run(watch(url, model, window))
        console.print(model.table())
        if not model.channels:
            console.print(f"no channels seen on {parse_url(url).url()} under {root}/")
        return

    async def live() -> None:
        with Live(console=console, get_renderable=model.table, refresh_per_second=2):
            await watch(url, model, None)

    try:
        asyncio.run(live())
    except KeyboardInterrupt:
        pass
