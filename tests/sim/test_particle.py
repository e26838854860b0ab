"""The particle model against exact diffusion results."""

from __future__ import annotations

import dataclasses

import numpy as np

from cyclerctl.program import End
from cyclerctl.sim.model import CellModel
from cyclerctl.sim.particle import crank_surface, modes


def test_modes_match_sphere_eigenvalues():
    # exact: mu_n = -lambda_n^2 with tan(lambda) = lambda (4.4934, 7.7253, ...)
    md = modes()
    exact = -np.array([4.493409, 7.725252, 10.904122]) ** 2
    assert md.mu[0] == 0.0
    np.testing.assert_allclose(md.mu[1:4], exact, rtol=0.02)
    assert abs(md.volumes.sum() - 1.0) < 1e-12


def test_constant_flux_surface_matches_crank(hc_constant_d):
    # a sodiation pulse into a uniform particle; the double layer made negligible so the faradaic
    # current is the applied one from the first millisecond
    preset = dataclasses.replace(hc_constant_d, double_layer_capacitance=1e-9)
    m = CellModel(preset)
    mat = preset.materials[0]
    tau = mat.particle_radius**2 / mat.diffusivity
    q = m.mp[0, 0]
    current = -2e-4
    ss = m.new_step()
    r = m.run(ss, 0, current, 600.0, every=1.0, ends=(End("step_time", ">=", 600.0),))
    truth = m.truth(r.out)
    t = r.out[:, 0]
    sel = t >= 1.0
    dx_sim = truth["surface_stoichiometry"][sel] - mat.initial_stoichiometry
    dx_exact = -current * tau / (3 * q) * crank_surface(t[sel], tau)
    rel = np.abs(dx_sim / dx_exact - 1)
    assert rel.max() < 0.005, rel.max()
    # and the mean stoichiometry is exactly the charge passed
    np.testing.assert_allclose(truth["mean_stoichiometry"][-1] - mat.initial_stoichiometry,
                               -current * 600.0 / q, rtol=1e-9)


def test_double_layer_transient_is_resolved_after_a_current_step(hc_constant_d):
    """A pulse recorded every 0.5 s: the faradaic current (the part of the applied current that has left
    the double layer, C_dl R_ct ~ 0.1 s) matches a run with 1 ms steps throughout. With sub-steps
    growing x4 from 1 ms regardless of C_dl R_ct it lagged by 1 % of the current at 1 s."""
    from cyclerctl.sim import kernel as K

    def faradaic(h_max: float) -> tuple[np.ndarray, np.ndarray]:
        m = CellModel(hc_constant_d.with_materials(initial_stoichiometry=0.3))
        m.cp[K.H_MAX] = h_max
        current = -1e-4
        r = m.run(m.new_step(), 0, current, 10.0, every=0.5, ends=(End("step_time", ">=", 10.0),))
        return r.out[:, 0], m.truth(r.out)["faradaic_current"] / current

    t, ref = faradaic(1e-3)
    t2, got = faradaic(60.0)
    np.testing.assert_allclose(t2, t)
    late = t >= 1.0
    assert ref[late].min() > 0.99  # the double layer has charged by 1 s (the rest is its sqrt(t) tail)
    assert np.abs(got[late] - ref[late]).max() < 1e-3
