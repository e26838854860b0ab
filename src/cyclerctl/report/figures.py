"""Figures of a run, in the figure types of the source papers: voltage against specific capacity of
the first cycles, capacity and CE against cycle, dQ/dV, GITT D against potential, Nyquist with the
fitted circuit, CV curves, Arrhenius. Each figure is made only when the run has data for it, and is
written as PNG (for a quick look) and PDF (for a paper) into RUN_DIR/report/.

Matplotlib is used through its object API (Figure + the Agg canvas): no pyplot state, no display.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.base import GAS_CONSTANT, MetricRow
from ..analysis.circuits import parse_circuit
from ..analysis.offline import _open, analyze_journal_channels
from ..errors import ConfigError

STYLE = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": 150, "savefig.bbox": "tight"}


def _figure(width: float = 4.2, height: float = 3.2) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(STYLE)
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p)
        paths.append(p)
    return paths


def _cycles_to_show(cycles: list[int]) -> list[int]:
    """First three cycles and a few later ones (10, 50, 100, ... as far as the run goes)."""
    want = [c for c in cycles[:3]]
    for c in (10, 20, 50, 100, 200, 500, 1000, 5000, 10000):
        if c in cycles and c not in want:
            want.append(c)
    if cycles and cycles[-1] not in want and len(want) < 6:
        want.append(cycles[-1])
    return want


def voltage_capacity(samples: dict, techniques: dict[int, str], mass: float | None, out: Path) -> list[Path]:
    t, v, i = samples["test_time_second"], samples["voltage_volt"], samples["current_ampere"]
    sc, cyc = samples["step_count"], samples["cycle_count"]
    gcd = np.isin(sc, [s for s, tech in techniques.items() if tech in ("gcd", "cccv")])
    if gcd.sum() < 4:
        return []
    fig = _figure()
    ax = fig.add_subplot()
    cycles = sorted({int(c) for c in cyc[gcd]})
    show = _cycles_to_show(cycles)
    colors = _colors(len(show))
    scale = 1 / 3.6 / (mass * 1e3) if mass else 1 / 3.6
    for color, c in zip(colors, show, strict=True):
        for sign, ls in ((-1, "-"), (1, "--")):
            m = gcd & (cyc == c) & (np.sign(i) == sign)
            if m.sum() < 2:
                continue
            idx = np.flatnonzero(m)
            tt, ii, vv = t[idx], i[idx], v[idx]
            same_step = sc[idx][1:] == sc[idx][:-1]
            dq = np.where(same_step, 0.5 * np.abs(ii[1:] + ii[:-1]) * np.diff(tt), 0.0)
            q = np.r_[0.0, np.cumsum(dq)] * scale
            ax.plot(q, vv, ls, color=color, lw=1.2, label=f"cycle {c}" if sign < 0 else None)
    ax.set_xlabel("specific capacity / mAh g⁻¹" if mass else "capacity / mAh")
    ax.set_ylabel("voltage / V vs Na⁺/Na")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("Charge–discharge profiles (— sodiation, -- desodiation)", fontsize=8)
    return _save(fig, out, "voltage_capacity")


def capacity_ce(rows: list[MetricRow], out: Path) -> list[Path]:
    data = [r.data for r in rows if r.data.get("coulombic_efficiency") is not None]
    if not data:
        return []
    c = np.array([d["cycle_count"] for d in data])
    spec = data[0].get("specific_charge_capacity_mah_g") is not None
    key_d = "specific_discharge_capacity_mah_g" if spec else "discharge_capacity_ah"
    key_c = "specific_charge_capacity_mah_g" if spec else "charge_capacity_ah"
    mult = 1.0 if spec else 1e3
    fig = _figure(4.8, 3.2)
    ax = fig.add_subplot()
    ax.plot(c, [d[key_d] * mult for d in data], "o", ms=3, mfc="none", color="tab:blue", label="discharge (sodiation)")
    ax.plot(c, [d[key_c] * mult for d in data], "o", ms=3, color="tab:blue", label="charge (desodiation)")
    ax.set_xlabel("cycle")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("specific capacity / mAh g⁻¹" if spec else "capacity / mAh")
    ax2 = ax.twinx()
    ax2.plot(c, [d["coulombic_efficiency"] * 100 for d in data], "s", ms=2.5, color="tab:red", label="CE")
    ax2.set_ylabel("coulombic efficiency / %", color="tab:red")
    ax2.grid(False)
    ax2.spines["right"].set_visible(True)
    ce = np.array([d["coulombic_efficiency"] * 100 for d in data])
    ax2.set_ylim(min(90.0, float(ce.min()) - 2), max(101.0, float(ce.max()) + 0.5))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], frameon=False, fontsize=7, loc="lower left")
    ret = data[-1].get("capacity_retention")
    if ret is not None:
        ref = data[-1].get("reference_cycle") or data[0]["cycle_count"]
        ax.set_title(f"Retention {ret * 100:.1f} % of cycle {ref} after cycle {data[-1]['cycle_count']}", fontsize=8)
    return _save(fig, out, "capacity_ce")


def dqdv(rows: list[MetricRow], out: Path) -> list[Path]:
    rows = [r for r in rows if r.data.get("voltage_volt") is not None]  # long runs keep selected curves
    if not rows:
        return []
    cycles = sorted({r.data["cycle_count"] for r in rows})
    show = _cycles_to_show(cycles)
    fig = _figure()
    ax = fig.add_subplot()
    colors = dict(zip(show, _colors(len(show)), strict=True))
    for r in rows:
        d = r.data
        if d["cycle_count"] not in colors:
            continue
        key = next(k for k in d if k.startswith("dqdv_"))
        y = np.array(d[key], float) * (-1 if d["direction"] == "discharge" else 1)
        ax.plot(d["voltage_volt"], y, color=colors[d["cycle_count"]], lw=1,
                label=f"cycle {d['cycle_count']}" if d["direction"] == "discharge" else None)
        for p in d.get("peaks", []):
            sgn = -1 if d["direction"] == "discharge" else 1
            ax.plot(p["voltage_volt"], sgn * p["height"], "v" if sgn < 0 else "^", ms=3, color=colors[d["cycle_count"]])
    unit = "mAh g⁻¹ V⁻¹" if any("mah_g_v" in k for k in rows[0].data) else "mAh V⁻¹"
    ax.set_xlabel("voltage / V vs Na⁺/Na")
    ax.set_ylabel(f"dQ/dV / {unit}")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("Differential capacity (sodiation < 0 < desodiation)", fontsize=8)
    return _save(fig, out, "dqdv")


def gitt(rows: list[MetricRow], out: Path) -> list[Path]:
    data = [r.data for r in rows if r.data.get("diffusion_coefficient_cm2_s") is not None]
    if not data:
        return []
    fig = _figure(4.6, 3.4)
    ax = fig.add_subplot()
    for direction, marker in (("discharge", "o"), ("charge", "s")):
        dd = [d for d in data if d.get("direction") == direction]
        if not dd:
            continue
        e = np.array([d["potential_after_volt"] for d in dd])
        for key, color, name in (("diffusion_coefficient_cm2_s", "tab:blue", "sphere fit"),
                                 ("diffusion_coefficient_two_term_cm2_s", "tab:green", "√t + t fit"),
                                 ("diffusion_coefficient_classic_cm2_s", "tab:gray", "Weppner–Huggins")):
            y = np.array([d.get(key) or np.nan for d in dd], float)
            valid = np.array([bool(d.get("valid")) for d in dd])
            lab = f"{name} ({'sodiation' if direction == 'discharge' else 'desodiation'})"
            ax.semilogy(e[valid], y[valid], marker, ms=3.5, color=color, label=lab, ls="none")
            ax.semilogy(e[~valid], y[~valid], marker, ms=3.5, mfc="none", color=color, ls="none")
    ax.set_xlabel("relaxed potential / V vs Na⁺/Na")
    ax.set_ylabel("D$_{Na^+}$ / cm² s⁻¹")
    ax.legend(frameon=False, fontsize=6)
    ax.set_title("GITT diffusion coefficient (open: flagged pulses)", fontsize=8)
    return _save(fig, out, "gitt_diffusion")


def nyquist(rows: list[MetricRow], out: Path) -> list[Path]:
    """Full spectrum (left) and the high-frequency arcs (right), data as points, best fit as lines."""
    if not rows:
        return []
    fig = _figure(7.6, 3.6)
    axes = fig.subplots(1, 2)
    colors = _colors(len(rows))
    zoom = 0.0
    for color, r in zip(colors, rows, strict=True):
        d = r.data
        re_, im = np.array(d["real_impedance_ohm"]), np.array(d["imaginary_impedance_ohm"])
        tk = d.get("temperature_kelvin")
        lab = f"step {d.get('step_count')}" + (f", {tk - 273.15:.0f} °C" if tk else "")
        best = next((f for f in d.get("fits", []) if f["circuit"] == d.get("best_circuit")), None)
        fit = None
        if best:
            f = np.array(d["frequency_hertz"])
            ff = np.logspace(np.log10(f.max()), np.log10(f.min()), 400)
            c = parse_circuit(best["circuit"])
            fit = c.impedance([best["parameters"][n] for n in c.names], ff)
            arcs = sum(v for k, v in best["parameters"].items() if k[0] == "R" and k[1:].isdigit())
            zoom = max(zoom, 1.4 * arcs)
        for ax in axes:
            ax.plot(re_, -im, "o", ms=2.5, mfc="none", color=color, label=lab)
            if fit is not None:
                ax.plot(fit.real, -fit.imag, "-", lw=1, color=color)
    if zoom <= 0:
        zoom = 0.3 * max(float(np.max(r.data["real_impedance_ohm"])) for r in rows)
    axes[1].set_xlim(0, zoom)
    axes[1].set_ylim(-0.05 * zoom, 0.6 * zoom)
    axes[1].set_title("high-frequency arcs", fontsize=8)
    for ax in axes:
        ax.set_xlabel("Z′ / Ω")
        ax.set_ylabel("−Z″ / Ω")
        ax.set_aspect("equal", adjustable="box" if ax is axes[1] else "datalim")
    axes[0].legend(frameon=False, fontsize=7)
    d = rows[-1].data
    rct = d.get("charge_transfer_resistance_ohm")
    axes[0].set_title(f"fit {d.get('best_circuit')}" + (f": R_ct = {rct:.3g} Ω" if rct else ""), fontsize=8)
    return _save(fig, out, "nyquist")


def cv_curves(samples: dict, steps: list[tuple[int, float | None]], out: Path) -> list[Path]:
    if not steps:
        return []
    fig = _figure()
    ax = fig.add_subplot()
    colors = _colors(len(steps))
    for color, (s, rate) in zip(colors, steps, strict=True):
        m = samples["step_count"] == s
        if m.sum() < 3:
            continue
        lab = f"{rate * 1e3:.3g} mV s⁻¹" if rate else f"step {s}"
        ax.plot(samples["voltage_volt"][m], samples["current_ampere"][m] * 1e3, lw=1, color=color, label=lab)
    ax.set_xlabel("potential / V vs Na⁺/Na")
    ax.set_ylabel("current / mA")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("Cyclic voltammograms", fontsize=8)
    return _save(fig, out, "cv")


def arrhenius(rows: list[MetricRow], out: Path) -> list[Path]:
    rows = [r for r in rows if r.data.get("source", "eis") == "eis"]  # the R_ct rows (GITT rows carry D only)
    if not rows:
        return []
    d = rows[-1].data
    t = np.array(d["temperature_kelvin"], float)
    r = np.array(d["charge_transfer_resistance_ohm"], float)
    y = np.log(r / t)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(1000 / t, y, "o", ms=4, color="tab:blue")
    ea = d["activation_energy_kj_mol"] * 1e3
    x = np.linspace((1000 / t).min(), (1000 / t).max(), 50)
    b = float(np.mean(y - ea / GAS_CONSTANT / t))
    ax.plot(x, b + ea / GAS_CONSTANT * x / 1000, "-", color="tab:blue", lw=1)
    ax.set_xlabel("1000/T / K⁻¹")
    ax.set_ylabel("ln(R$_{ct}$/T) / ln(Ω K⁻¹)")
    se = d.get("activation_energy_stderr_kj_mol")
    txt = f"E$_a$ = {ea / 1e3:.1f}" + (f" ± {se:.1f}" if se else "") + " kJ mol⁻¹"
    ax.set_title(f"Arrhenius (charge transfer): {txt}", fontsize=8)
    return _save(fig, out, "arrhenius")


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.0])]


def make_report(run_dir: str | Path) -> list[Path]:
    """Write the figures the run has data for into RUN_DIR/report/ (PNG and PDF); return the paths."""
    from ..store import read

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no such run directory: {run_dir}")
    results = analyze_journal_channels(run_dir)
    conn = _open(run_dir)
    out_root = run_dir / "report"
    out_root.mkdir(exist_ok=True)
    written: list[Path] = []
    try:
        chans = read.channels(conn)
        for ch, desc in chans.items():
            out = out_root if len(chans) == 1 else out_root / ch
            out.mkdir(exist_ok=True)
            res = results[ch]
            samples = read.samples(conn, ch)
            techniques, cv_steps = {}, []
            for e in read.events(conn, ch, "step_start"):
                tech = e.data.get("technique")
                techniques[int(e.step_count)] = tech
                if tech == "cv":
                    cv_steps.append((int(e.step_count), e.data.get("scan_rate_volt_per_second")))
            mass = (desc.get("cell") or {}).get("active_mass")
            mass = mass if isinstance(mass, (int, float)) and mass > 0 and math.isfinite(mass) else None
            written += voltage_capacity(samples, techniques, mass, out)
            written += capacity_ce(res.get("cycle", []), out)
            written += dqdv(res.get("dqdv", []), out)
            written += gitt(res.get("gitt", []), out)
            written += nyquist(res.get("eis", []), out)
            written += cv_curves(samples, cv_steps, out)
            written += arrhenius(res.get("arrhenius", []), out)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot read the journal of {run_dir}: {exc}") from None
    finally:
        conn.close()
    return written
