"""Write a small GITT fixture simulated by PyBaMM (single-particle model, constant D) as BDF CSV,
with PyBaMM's true D in a sidecar JSON. The analysis tests read it through the BDF import path.

PyBaMM is a development-only tool here (pip install pybamm); cyclerctl never imports it.
Run:  PYBAMM_DISABLE_TELEMETRY=true python bench/pybamm_gitt_fixture.py [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import pybamm  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests" / "analysis" / "data"
TAU_D = 3000.0  # s, chosen diffusion time R²/D
PULSE, REST, N_PULSES = 300.0, 5400.0, 6  # s, s, count (τ/τ_d = 0.1: long pulses)


def sloping_ocp(sto):
    """U(x) = 0.9 − 0.8·x V: linear, with a small curvature-free slope like hard carbon's slope region."""
    return 0.9 - 0.8 * sto


def main() -> None:
    model = pybamm.lithium_ion.SPM({"working electrode": "positive"})
    param = pybamm.ParameterValues("Ecker2015_graphite_halfcell")
    radius = float(param["Positive particle radius [m]"])
    d = radius**2 / TAU_D
    param.update({"Positive particle diffusivity [m2.s-1]": d})
    # a sloping open-circuit potential (no two-phase plateau), so every pulse is analysable;
    # the pulse train titrates x from 0.3 in steps of about 0.02
    param.update({"Positive electrode OCP [V]": sloping_ocp,
                  "Initial concentration in positive electrode [mol.m-3]":
                  0.3 * float(param["Maximum concentration in positive electrode [mol.m-3]"])})
    capacity = float(param["Nominal cell capacity [A.h]"])
    current = capacity / 20  # C/20 lithiation of the working electrode (PyBaMM: positive = discharge)
    steps = [pybamm.step.rest(duration=600.0, period=10.0)]
    for _ in range(N_PULSES):
        steps += [pybamm.step.current(current, duration=PULSE, period=1.0),
                  pybamm.step.rest(duration=REST, period=10.0)]
    experiment = pybamm.Experiment(steps)
    mesh = dict(model.default_submesh_types)
    mesh["positive particle"] = pybamm.MeshGenerator(pybamm.Exponential1DSubMesh,
                                                     submesh_params={"side": "right", "stretch": 2.0})
    sim = pybamm.Simulation(model, parameter_values=param, experiment=experiment, submesh_types=mesh,
                            var_pts={**model.default_var_pts, "r_p": 120})
    sol = sim.solve()
    t = sol["Time [s]"].entries
    v = sol["Voltage [V]"].entries
    i = -sol["Current [A]"].entries  # BDF: positive = charge; lithiation of the working electrode < 0
    keep = np.r_[np.diff(t) > 1e-9, True]  # PyBaMM repeats the time at step boundaries: keep the new step's
    t, v, i = t[keep], v[keep], i[keep]
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / "pybamm_spm_gitt.bdf.csv"
    with csv.open("w") as f:
        f.write("Test Time / s,Voltage / V,Current / A\n")
        for row in zip(t, v, i, strict=True):
            f.write(f"{row[0]:.3f},{row[1]:.7f},{row[2]:.9g}\n")
    meta = {
        "generator": "bench/pybamm_gitt_fixture.py",
        "pybamm_version": pybamm.__version__,
        "model": "SPM, working electrode positive (half cell), Ecker2015_graphite_halfcell",
        "particle_mesh": "exponential, stretch 2, 120 points, refined at the surface",
        "particle_radius_m": radius,
        "diffusion_coefficient_m2_s": d,
        "diffusion_coefficient_cm2_s": d * 1e4,
        "diffusion_time_s": TAU_D,
        "pulse_s": PULSE, "rest_s": REST, "pulses": N_PULSES,
        "current_ampere": -current,
        "ocv": "U(x) = 0.9 - 0.8 x V (linear)",
        "initial_stoichiometry": 0.3,
    }
    (OUT / "pybamm_spm_gitt.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {csv} ({t.size} rows) and its sidecar; D = {d:.4g} m²/s, R = {radius:.4g} m")


if __name__ == "__main__":
    main()
