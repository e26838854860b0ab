"""One hard-carbon half cell, two simulators: PyBaMM's SPM and cyclerctl's model, same parameters.

PyBaMM (a development extra, never imported by cyclerctl itself) has no anode half cell, so the hard
carbon goes into the *positive* slot of its half-cell model (`"working electrode": "positive"`, the
Ecker2015 graphite half-cell set) with a metal counter electrode. The mapping, PyBaMM name ->
cyclerctl preset field:

| PyBaMM parameter                                        | value                 | cyclerctl                          |
|---------------------------------------------------------|-----------------------|------------------------------------|
| Positive electrode thickness [m]                        | 64e-6 (Chayambuka)    | active volume = eps_s * L * area   |
| Positive electrode active material volume fraction      | 0.489                 | (with density -> active mass)      |
| Positive particle radius [m]                            | 3.48e-6               | particle_radius                    |
| Maximum concentration in positive electrode [mol.m-3]   | 14540                 | theoretical_capacity = F c_max/rho |
| Positive particle diffusivity [m2.s-1]                  | 1e-15 (constant)      | diffusivity                        |
| Positive electrode OCP [V]                              | interpolant of the    | sites (the same MSMR hard-carbon   |
|                                                         | MSMR table            | sites, tabulated identically)      |
| Positive electrode exchange-current density [A.m-2]     | 0.05 (constant)       | exchange_current_density           |
| Positive electrode double-layer capacity [F.m-2]        | 0.2                   | double_layer_capacitance           |
| Exchange-current density for lithium metal electrode    | 5 (constant)          | counter_electrode i0               |
| Negative electrode double-layer capacity [F.m-2]        | 0.2 (set's default)   | counter double_layer_capacitance   |
| Contact resistance [Ohm] (option "contact resistance")  | 6                     | series_resistance                  |
| Electrode height x width [m2]                           | 1.131e-4              | cell area                          |
| Initial concentration in positive electrode             | 0.05 c_max            | initial_stoichiometry 0.05         |

cyclerctl's side: no SEI, no fade, no noise, no Arrhenius (298.15 K). The counter electrode's double
layer enters cyclerctl's impedance only (its time stepper treats the metal electrode as quasi-static).
PyBaMM's SPM has no electrolyte resistance, so R_s is the contact resistance alone.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

from cyclerctl.program import Cell  # noqa: E402
from cyclerctl.sim.ocv import GRID, table  # noqa: E402
from cyclerctl.sim.preset import Material, Preset  # noqa: E402

F = 96485.33212
L, EPS, RP, CMAX, D, I0, CDL, I0_METAL, RS = 64e-6, 0.489, 3.48e-6, 14540.0, 1e-15, 0.05, 0.2, 5.0, 6.0
CDL_METAL = 0.2  # F/m^2, PyBaMM's "Negative electrode double-layer capacity" of the metal electrode
AREA = 1.131e-4
RHO = 1600.0
X0 = 0.05
SITES = ((0.972, 0.050, 2.34), (0.404, 0.289, 6.54), (0.144, 0.136, 1.41), (0.063, 0.581, 0.48))


def cyclerctl_preset() -> Preset:
    volume = EPS * L * AREA
    mass = volume * RHO
    q_specific = F * CMAX / RHO  # C/kg
    mat = Material(name="hard carbon", mass_fraction=1.0, theoretical_capacity=q_specific, density=RHO,
                   particle_radius=RP, diffusivity=D, exchange_current_density=I0, sites=SITES,
                   initial_stoichiometry=X0)
    cell = Cell(name="pybamm-hc", active_mass=mass, area=AREA, nominal_specific_capacity=q_specific)
    return Preset(name="pybamm_hc", default_cell=cell, materials=(mat,), series_resistance=RS,
                  double_layer_capacitance=CDL, counter_exchange_current_density=I0_METAL,
                  counter_double_layer_capacitance=CDL_METAL, sei_capacity=0.0, sei_slow_fraction=0.0,
                  noise_voltage=0.0)


def pybamm_model_and_parameters(surface_form: str = "differential", i0: float = I0, i0_metal: float = I0_METAL,
                                rs: float = RS):
    """PyBaMM's SPM half cell and its parameters (the table above; i0, i0_metal, rs overridable)."""
    import pybamm

    u, _s = table(SITES)
    xg = np.linspace(0.0, 1.0, GRID)

    def ocp(sto):
        return pybamm.Interpolant(xg, u, sto, name="hc_ocp", interpolator="linear")

    def j0(c_e, c_s_surf, c_s_max, T):
        return pybamm.Scalar(i0)

    def j0_metal(c_e, c_li, T):
        return pybamm.Scalar(i0_metal)

    pv = pybamm.ParameterValues("Ecker2015_graphite_halfcell")
    pv.update({
        "Positive electrode thickness [m]": L,
        "Positive electrode active material volume fraction": EPS,
        "Positive electrode porosity": 1 - EPS - 0.05,
        "Positive particle radius [m]": RP,
        "Maximum concentration in positive electrode [mol.m-3]": CMAX,
        "Positive particle diffusivity [m2.s-1]": D,
        "Positive electrode OCP [V]": ocp,
        "Positive electrode OCP entropic change [V.K-1]": 0.0,
        "Positive electrode exchange-current density [A.m-2]": j0,
        "Exchange-current density for lithium metal electrode [A.m-2]": j0_metal,
        "Contact resistance [Ohm]": rs,
        "Electrode height [m]": 1.0e-2,
        "Electrode width [m]": AREA / 1.0e-2,
        "Initial concentration in positive electrode [mol.m-3]": X0 * CMAX,
        "Lower voltage cut-off [V]": -1.0,
        "Upper voltage cut-off [V]": 4.0,
        "Open-circuit voltage at 0% SOC [V]": -1.0,
        "Open-circuit voltage at 100% SOC [V]": 4.0,
        "Ambient temperature [K]": 298.15,
        "Initial temperature [K]": 298.15,
        "Reference temperature [K]": 298.15,
        "Number of electrodes connected in parallel to make a cell": 1.0,
        "Number of cells connected in series to make a battery": 1.0,
    }, check_already_exists=False)
    pv.update({"Positive electrode double-layer capacity [F.m-2]": CDL}, check_already_exists=False)
    options = {"working electrode": "positive", "contact resistance": "true", "surface form": surface_form}
    model = pybamm.lithium_ion.SPM(options)
    return model, pv


def capacity_ah() -> float:
    return F * CMAX * EPS * L * AREA / 3600.0
