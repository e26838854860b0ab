"""CLI commands of the protocol language: validate, plan."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.console import Console

from .. import units
from ..errors import ConfigError, CyclerError, ProtocolError
from ..paths import resolve_data_file
from . import compile_protocol, describe, load, resolve_cell, summary
from .loader import all_errors


class InvalidProtocols(CyclerError):
    """validate found errors (already printed, one line each)."""

    exit_code = 2


def _overrides(mass: str | None, area: str | None, nominal_capacity: str | None) -> dict[str, str]:
    return {k: v for k, v in (("active_mass", mass), ("area", area),
                              ("nominal_specific_capacity", nominal_capacity)) if v is not None}


def _protocol_path(value: str) -> Path:
    """A protocol path as given, or the name of a shipped protocol (protocols/NAME.yaml)."""
    try:
        return resolve_data_file(value, "protocols")
    except FileNotFoundError:
        return Path(value)  # load() reports "no such file" with the name as given


def validate(
    files: list[str] = typer.Argument(..., help="Protocol files (or names of shipped protocols)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell file to validate against (overrides the cell block)."),
) -> None:
    """Check protocol files: parse, validate and compile each one.

    Prints one line per problem as file:line:column: message and exits non-zero if any file is
    invalid. Example: cyclerctl validate protocols/*.yaml
    """
    bad = 0
    for name in files:
        path = _protocol_path(name)
        try:
            protocol = load(path)
            program = compile_protocol(protocol, resolve_cell(protocol, cell))
        except ProtocolError as exc:
            bad += 1
            for e in all_errors(exc):
                typer.echo(str(e), err=True)
            continue
        typer.echo(f"{path}: ok ({len(program.steps())} steps)")
    if bad:
        raise InvalidProtocols(f"{bad} of {len(files)} file{'s' if len(files) > 1 else ''} invalid")


def _load_estimator():
    """cyclerctl.sim.estimate(program, preset) -> {duration_s, samples, bytes}, or None without it."""
    try:
        from ..sim import estimate  # the simulator owns the model that knows how long things take
    except ImportError:
        return None
    return estimate


def default_preset(cell) -> str:
    """The shipped simulator preset closest to the cell's material (hard carbon unless it names Sn)."""
    words = set(re.findall(r"[a-z]+", (cell.material or "").lower()))
    if "sn" in words or "tin" in words:
        return "sn_hc" if words & {"hc", "hard", "carbon"} else "nano_sn"
    return "hard_carbon"


def _estimate_lines(program, preset: str | None) -> list[str]:
    estimate = _load_estimator()
    if estimate is None:
        return ["estimate: simulator not available"]
    preset = preset or default_preset(program.cell)
    try:
        result = estimate(program, preset)
    except (ProtocolError, ConfigError):
        raise
    except Exception as exc:  # the estimate is advisory; the plan stands without it
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [f"estimate: not available ({first})"]
    duration = float(result.get("duration_s", float("nan")))
    samples = int(result.get("samples", 0))
    size = float(result.get("bytes", 0))
    size_text = next(f"{size / s:.3g} {u}" for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B"))
                     if size >= s or u == "B")
    lines = [f"estimate ({preset}{', extrapolated' if result.get('extrapolated') else ''}): "
             f"duration {units.fmt(duration, 'time')}, {samples:,} samples, {size_text} of data"]
    lines += [f"  note: {n}" for n in result.get("notes", []) or []]
    return lines


def plan(
    protocol: str = typer.Argument(..., help="Protocol file (or the name of a shipped protocol)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell file (same keys as the protocol's cell block)."),
    mass: str | None = typer.Option(None, "--mass", help="Active mass, e.g. '3.4 mg' (overrides the cell)."),
    area: str | None = typer.Option(None, "--area", help="Electrode area, e.g. '1.131 cm^2'."),
    nominal_capacity: str | None = typer.Option(None, "--nominal-capacity",
                                                help="Nominal specific capacity (defines 1C), e.g. '300 mAh/g'."),
    preset: str | None = typer.Option(None, "--preset", help="Simulator preset (name or file) for the estimate."),
) -> None:
    """Show the compiled program: every step with its setpoint (your units and SI), its end
    conditions and where each goes; with the simulator, the estimated duration and data size.

    Example: cyclerctl plan protocols/hc_formation.yaml --mass 4.3mg
    """
    path = _protocol_path(protocol)
    p = load(path)
    the_cell = resolve_cell(p, cell, _overrides(mass, area, nominal_capacity))
    program = compile_protocol(p, the_cell)
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=max(console.width, 180))
    for line in summary(program):
        console.print(line, highlight=False, markup=False)
    console.print(describe(program))
    for line in _estimate_lines(program, preset):
        console.print(line, highlight=False, markup=False)
