"""CLI command: analyze — recompute every metric of a run from its journal, or analyse a BDF file
recorded elsewhere."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from .base import KINDS, MetricRow


def _summary(results: dict[str, list[MetricRow]]) -> list[str]:
    lines = []
    cyc = results.get("cycle", [])
    if cyc:
        complete = [r.data for r in cyc if r.data.get("coulombic_efficiency") is not None]
        last = complete[-1] if complete else cyc[-1].data
        first = complete[0] if complete else cyc[0].data
        ice = first.get("coulombic_efficiency")
        ce = last.get("coulombic_efficiency")
        q = last.get("specific_charge_capacity_mah_g")
        parts = [f"{len(cyc)} cycles"]
        if ice is not None:
            parts.append(f"ICE {ice * 100:.2f} %")
        if ce is not None:
            parts.append(f"CE of cycle {last['cycle_count']} {ce * 100:.3f} %")
        if q is not None:
            parts.append(f"last reversible {q:.1f} mAh/g")
        elif last.get("charge_capacity_ah") is not None:
            parts.append(f"last charge {last['charge_capacity_ah'] * 1e3:.4g} mAh")
        lines.append("cycle: " + ", ".join(parts))
    gitt = results.get("gitt", [])
    if gitt:
        valid = [r.data["diffusion_coefficient_cm2_s"] for r in gitt if r.data.get("valid")]
        txt = f"gitt: {len(gitt)} pulses, {len(valid)} valid"
        if valid:
            txt += f", D {min(valid):.3g} … {max(valid):.3g} cm²/s"
        lines.append(txt)
    for kind in ("rate", "dqdv", "ici", "cv"):
        if results.get(kind):
            lines.append(f"{kind}: {len(results[kind])} rows")
    eis = results.get("eis", [])
    if eis:
        rct = [r.data["charge_transfer_resistance_ohm"] for r in eis
               if r.data.get("valid") and r.data.get("charge_transfer_resistance_ohm") is not None]
        waves = sum(r.data.get("acquisition") == "waveform" for r in eis)
        txt = f"eis: {len(eis)} spectr{'um' if len(eis) == 1 else 'a'}" + (
            f" ({waves} from the waveform)" if waves else "") + f", {len(rct)} valid"
        if len(rct) == 1:
            txt += f", R_ct {rct[0]:.4g} Ω"
        elif rct:
            txt += f", R_ct {min(rct):.4g} … {max(rct):.4g} Ω"
        lines.append(txt)
    arr = results.get("arrhenius", [])
    eis = [r for r in arr if r.data.get("source", "eis") == "eis"]
    if eis:
        d = eis[-1].data
        se = d.get("activation_energy_stderr_kj_mol")
        lines.append(f"arrhenius: E_a = {d['activation_energy_kj_mol']:.1f}" + (f" ± {se:.1f}" if se else "")
                     + " kJ/mol (R_ct)")
    gitt = [r for r in arr if r.data.get("source") == "gitt"]
    if gitt:
        d = gitt[-1].data
        se = d.get("diffusion_activation_energy_stderr_kj_mol")
        lines.append(f"arrhenius: E_a = {d['diffusion_activation_energy_kj_mol']:.1f}" + (f" ± {se:.1f}" if se else "")
                     + " kJ/mol (GITT D)")
    return lines or ["no metrics (the data hold no complete cycle, pulse, sweep or spectrum)"]


def _cell_notes(cell, radius: float | None) -> list[str]:
    """What a cell description without some keys leaves out of the analysis of a file."""
    notes = []
    if radius is None and cell.particle_radius is None:
        notes.append("no particle_radius (cell file or --particle-radius): GITT, ICI and EIS give diffusion "
                     "times, not diffusion coefficients")
    if cell.nominal_capacity is None:
        notes.append("no active_mass and nominal_specific_capacity in the cell: specific capacities are left "
                     "out and a GITT pulse counts as on a plateau by |ΔE_s| < 2 mV alone")
    return notes


def analyze(path: Path = typer.Argument(..., help="A run directory (journal.sqlite), or a BDF .csv/.parquet file."),
            cell: Path | None = typer.Option(None, "--cell", help="Cell YAML (active_mass, particle_radius, ...) for BDF files."),
            reference_cycle: int | None = typer.Option(None, "--reference-cycle", help="Baseline cycle of capacity retention."),
            particle_radius: str | None = typer.Option(None, "--particle-radius", help="Particle radius, e.g. '3.5 um'."),
            out: Path | None = typer.Option(None, "--out", help="Folder for the metric tables (default RUN_DIR/metrics)."),
            ) -> None:
    """Recompute every metric from a run's journal, or analyse a BDF file from another cycler.

    Examples: cyclerctl analyze runs/X;  cyclerctl analyze cell7.bdf.csv --cell hc.yaml"""
    from .. import units
    from .live import AnalysisOptions
    from .offline import analyze_journal_channels, run_stream, write_metric_tables

    radius = units.parse(particle_radius, "length") if particle_radius else None
    options = AnalysisOptions(reference_cycle=reference_cycle, particle_radius=radius)
    if path.is_dir() or path.name.endswith(".sqlite"):
        if cell is not None:
            raise ConfigError("--cell is for BDF files; a run's journal already holds its cell")
        results = analyze_journal_channels(path, options)
        run_dir = path if path.is_dir() else path.parent
        out_dir = out or run_dir / "metrics"
    elif path.exists():
        from ..program import Cell
        from .bdf_import import bdf_stream, load_cell_file, read_bdf
        from .live import operators_for

        c = load_cell_file(cell) if cell is not None else Cell()
        cols = read_bdf(path)
        for note in _cell_notes(c, radius):
            typer.echo(f"note: {note}", err=True)
        ops = operators_for(c, "discharge" if c.kind == "anode_half_cell" else "charge", options)
        first = run_stream(ops, bdf_stream(cols, c, "discharge" if c.kind == "anode_half_cell" else "charge"))
        results = {path.name: first, "__first__": first}
        stem = path.name.split(".")[0]
        out_dir = out or path.parent / f"{stem}.metrics"
    else:
        raise ConfigError(f"no such run directory or file: {path}")
    written = write_metric_tables(out_dir, results)
    for ch, kinds in results.items():
        if ch == "__first__":
            continue
        typer.echo(f"[{ch}]")
        for line in _summary(kinds):
            typer.echo(f"  {line}")
    kinds_written = ", ".join(p.stem for p in written if p.stem in KINDS) or "none"
    typer.echo(f"metric tables ({kinds_written}) in {out_dir}")
