"""CLI command: report — figures (PNG and PDF) of a run."""

from __future__ import annotations

from pathlib import Path

import typer


def report(run_dir: Path = typer.Argument(..., help="The run directory (holds journal.sqlite).")) -> None:
    """Figures (PNG/PDF) of a run, in the figure types of the source papers. Example: cyclerctl report runs/X"""
    from .figures import make_report

    paths = make_report(run_dir)
    if not paths:
        typer.echo(f"no figures: the run in {run_dir} holds no complete cycle, pulse, sweep or spectrum yet")
        return
    names = sorted({p.stem for p in paths})
    typer.echo(f"{len(names)} figures ({', '.join(names)}) in {paths[0].parent}")
