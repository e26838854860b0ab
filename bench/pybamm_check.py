"""Cross-check of cyclerctl's cell model against PyBaMM's SPM with the same parameters (see
pybamm_halfcell.py for the mapping): terminal voltage of a CC sodiation and of a GITT pulse train
(RMS difference, goal <= 5 mV) and the impedance at rest (goal <= 2 %). Prints a table.

    PYBAMM_DISABLE_TELEMETRY=true .venv/bin/python bench/pybamm_check.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from pybamm_halfcell import capacity_ah, cyclerctl_preset, pybamm_model_and_parameters  # noqa: E402

from cyclerctl.sim.model import CellModel  # noqa: E402


def ours_cc(current: float, duration: float, every: float = 10.0):
    m = CellModel(cyclerctl_preset())
    ss = m.new_step()
    r = m.run(ss, 0, current, duration, every=every)
    return r.out[:, 0], r.out[:, 1], m


def ours_steps(steps, every=10.0):
    """steps: list of (current A, duration s) in cyclerctl's sign (+ = desodiation)."""
    m = CellModel(cyclerctl_preset())
    ts, vs = [], []
    for cur, dur in steps:
        ss = m.new_step()
        r = m.run(ss, 0, cur, m.time + dur, every=every)
        ts.append(r.out[:, 0])
        vs.append(r.out[:, 1])
    return np.concatenate(ts), np.concatenate(vs), m


def pybamm_steps(steps, every=10.0):
    import pybamm

    model, pv = pybamm_model_and_parameters("differential")
    # PyBaMM: positive current = discharge = lithiation of the positive (our sodiation) -> flip the sign
    exp = pybamm.Experiment([pybamm.step.current(-cur, duration=dur, period=every) for cur, dur in steps])
    sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp,
                            var_pts=_var_pts(model), solver=pybamm.IDAKLUSolver())
    sol = sim.solve()
    return sol["Time [s]"].entries, sol["Voltage [V]"].entries


def _var_pts(model):
    pts = dict(model.default_var_pts)
    pts["r_p"] = 100
    return pts


def rms_on_common_times(t1, v1, t2, v2):
    t = np.intersect1d(np.round(t1, 6), np.round(t2, 6))
    a = np.interp(t, t1, v1)
    b = np.interp(t, t2, v2)
    return float(np.sqrt(np.mean((a - b) ** 2))), len(t)


def _impedance(sol) -> np.ndarray:
    for name in ("impedance", "Z"):
        if hasattr(sol, name):
            return np.asarray(getattr(sol, name))
    return np.asarray(sol)


def main() -> None:
    import pybamm

    i_c10 = capacity_ah() / 10.0  # A
    rows = []
    # 1. CC sodiation at C/10 for 7 h (x 0.05 -> 0.75)
    steps = [(-i_c10, 7 * 3600.0)]
    t0 = time.perf_counter()
    t_o, v_o, _ = ours_steps(steps)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_p, v_p = pybamm_steps(steps)
    t_pb = time.perf_counter() - t0
    rms, n = rms_on_common_times(t_o, v_o, t_p, v_p)
    rows.append(("CC sodiation C/10, 7 h", f"{rms * 1e3:.2f} mV", n, t_ours, t_pb))
    # 2. GITT: 10 pulses of C/10 for 20 min, 1 h rests
    steps = [(-i_c10, 1200.0), (0.0, 3600.0)] * 10
    t0 = time.perf_counter()
    t_o, v_o, m = ours_steps(steps)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_p, v_p = pybamm_steps(steps)
    t_pb = time.perf_counter() - t0
    rms, n = rms_on_common_times(t_o, v_o, t_p, v_p)
    rows.append(("GITT 10 x (C/10 20 min + 1 h rest)", f"{rms * 1e3:.2f} mV", n, t_ours, t_pb))
    # 3. EIS at rest after the pulse train: PyBaMM's numerical linearisation vs our modal impedance
    f = np.logspace(-3, 3, 31)
    m.advance(0, 0.0, 300 * 3600.0)  # relax to a uniform particle, as PyBaMM starts
    z_o = m.impedance(f)
    model, pv = pybamm_model_and_parameters("differential")
    x_now = float(m.a[0, 0])
    pv.update({"Initial concentration in positive electrode [mol.m-3]": x_now * 14540.0})
    t0 = time.perf_counter()
    eis = pybamm.EISSimulation(model, parameter_values=pv, var_pts=_var_pts(model))
    sol = eis.solve(f)
    z_p = np.interp(f, np.asarray(sol.frequencies), _impedance(sol).real) + 1j * np.interp(
        f, np.asarray(sol.frequencies), _impedance(sol).imag)
    t_pb = time.perf_counter() - t0
    rel = np.abs(z_o - z_p) / np.abs(z_p)
    if "-v" in sys.argv:
        print(np.c_[f, z_o, z_p])
    rows.append(("EIS 1 kHz - 1 mHz at rest, x = 0.35", f"{rel.max() * 100:.2f} % max", len(f), 0.0, t_pb))
    print(f"{'comparison':45s} {'difference':>14s} {'points':>7s} {'cyclerctl s':>12s} {'PyBaMM s':>9s}")
    for name, diff, n, a, b in rows:
        print(f"{name:45s} {diff:>14s} {n:>7d} {a:12.3f} {b:9.3f}")


if __name__ == "__main__":
    main()
