"""EIS: circuit strings, CNLS fits, Lin-KK, Warburg σ -> D, and Arrhenius from R_ct(T)."""

import numpy as np
import pytest

from cyclerctl.analysis.arrhenius import activation_energy
from cyclerctl.analysis.base import GAS_CONSTANT, Event
from cyclerctl.analysis.circuits import fit_circuit, parse_circuit, warburg_coefficient
from cyclerctl.analysis.eis import EisOperator, EisSettings, analyze_spectrum, lin_kk
from cyclerctl.analysis.live import operators_for
from cyclerctl.analysis.synthetic import arrhenius_rct, randles_sphere_impedance
from cyclerctl.errors import ConfigError
from cyclerctl.program import Cell

# the hard-carbon-like half cell of the reference anchors: τ_d = 12 250 s, σ = 6.04 Ω s^-½
RP, D = 3.5e-6, 1e-15
TAU = RP * RP / D
Q_TH = 0.6 * 3.6
SLOPE = -0.5  # dU/dx, V
FREQ = np.logspace(5, -2, 71)


def spectrum(noise=0.0, seed=0, r_ct=60.0, freq=FREQ):
    z = randles_sphere_impedance(freq, r_s=5.0, r_ct=r_ct, c_dl=20e-6, ocv_slope=SLOPE, tau_d=TAU, q_th=Q_TH)
    rng = np.random.default_rng(seed)
    return z * (1 + noise * (rng.standard_normal(z.size) + 1j * rng.standard_normal(z.size)) / np.sqrt(2))


def test_circuit_strings_evaluate_series_and_parallel():
    c = parse_circuit("R0-p(R1,C1)")
    z = c.impedance([5.0, 60.0, 20e-6], np.array([1e-6, 1e9]))
    assert z[0].real == pytest.approx(65.0, rel=1e-6)
    assert z[1].real == pytest.approx(5.0, rel=1e-6)
    assert parse_circuit("R0-p(R1-W1,CPE1)").names == ["R0", "R1", "W1_sigma", "CPE1_Q", "CPE1_alpha"]
    for bad in ("R0-p(R1,C1", "R0--C1", "R0-X1", "R0-R0"):
        with pytest.raises(ConfigError):
            parse_circuit(bad)


def test_spherical_randles_fit_recovers_every_parameter():
    fit = fit_circuit("R0-p(R1-Sph1,C1)", FREQ, spectrum())
    p = dict(zip(fit.names, fit.values, strict=True))
    assert p["R0"] == pytest.approx(5.0, rel=1e-6)
    assert p["R1"] == pytest.approx(60.0, rel=1e-6)
    assert p["C1"] == pytest.approx(20e-6, rel=1e-6)
    assert p["Sph1_tau"] == pytest.approx(TAU, rel=1e-4)


def test_closed_form_jacobian_matches_central_differences_for_every_element():
    c = parse_circuit("R0-L1-p(R1-Wo1,CPE1)-p(R2-Ws1,C1)-p(R3-Sph1,C2)-W1-Sph2")
    freq = np.logspace(5, -3, 40)
    p = np.array([5.0, 1e-6, 30.0, 8.0, 50.0, 1e-4, 0.8, 20.0, 4.0, 3.0, 1e-5, 60.0, 900.0, 1e4, 2e-5, 6.0,
                  2.0, 1e-9])  # Sph2 with τ = 1 ns: |√(jωτ)| < 10^-2 at low f, the series branch
    z, jac = c.impedance_jacobian(p, freq)
    assert np.allclose(z, c.impedance(p, freq))
    for i in range(p.size):
        h = 1e-6 * p[i]
        up, dn = p.copy(), p.copy()
        up[i] += h
        dn[i] -= h
        numeric = (c.impedance(up, freq) - c.impedance(dn, freq)) / (2 * h)
        assert np.allclose(jac[:, i] * p[i], numeric * p[i], rtol=0, atol=1e-6 * np.abs(z).max()), c.names[i]


def test_compiled_levenberg_marquardt_reaches_minpacks_minimum():
    """The compiled trust-region LM and MINPACK (scipy, method "lm") from the same far-off start on a
    noisy two-arc spectrum, on the same residuals: the same minimum, and a trial step into overflow
    (exp of a huge log parameter) is rejected rather than fatal."""
    from scipy.optimize import least_squares

    from cyclerctl.analysis.circuit_kernel import levenberg_marquardt, residuals_into

    c = parse_circuit("R0-p(R1,C1)-p(R2-Sph1,C2)")
    truth = np.array([4.0, 6.0, 1.5e-6, 25.0, 900.0, 2000.0, 2e-5])
    freq = np.logspace(5, -2, 49)
    rng = np.random.default_rng(3)
    z = c.impedance(truth, freq) * (1 + 0.002 * (rng.standard_normal(49) + 1j * rng.standard_normal(49)) / np.sqrt(2))
    w, inv_w, is_alpha = 2 * np.pi * freq, 1 / np.abs(z), np.zeros(truth.size, dtype=bool)
    dz = np.empty((truth.size, freq.size), dtype=complex)

    def both(x):
        r, jac = np.empty(2 * freq.size), np.empty((truth.size, 2 * freq.size))
        residuals_into(c.program, w, np.ascontiguousarray(x), is_alpha, z, inv_w, dz, r, jac)
        return r, jac

    x0 = np.log(truth * np.array([2.0, 0.5, 3.0, 0.5, 2.0, 0.3, 1.5]))
    ref = least_squares(lambda x: both(x)[0], x0, jac=lambda x: both(x)[1].T, method="lm", x_scale="jac",
                        xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=3000)
    r, jac = np.empty(2 * freq.size), np.empty((truth.size, 2 * freq.size))
    x, cost, status, nfev = levenberg_marquardt(c.program, w, z, inv_w, is_alpha, x0, 3000, 1e-12, r, jac)
    assert status in (1, 2, 4) and nfev < 3000
    assert cost == pytest.approx(ref.cost, rel=1e-9)
    np.testing.assert_allclose(x, ref.x, atol=1e-5)
    np.testing.assert_allclose(r, both(x)[0], rtol=0, atol=1e-15)  # r and J are those at the returned x
    far = x0.copy()
    far[5] = 800.0  # τ = e^800: overflow on the first evaluation
    _, cost, status, _ = levenberg_marquardt(c.program, w, z, inv_w, is_alpha, far, 200, 1e-12, r, jac)
    assert np.isfinite(cost)


def test_stopping_at_the_lin_kk_level_keeps_the_all_starts_fit_on_two_arcs():
    """A counter-electrode arc merging into the working electrode's: a start read off the spectrum
    can end in a minimum with R_ct at a quarter of the truth and χ² within 2× of Lin-KK's; stopping
    only at the Lin-KK level itself must give what trying every start gives."""
    text = "R0-p(R1,C1)-p(R2-Sph1,C2)"
    truth = [4.0, 6.0, 1.5e-6, 25.0, 900.0, 2000.0, 2e-5]
    freq = np.logspace(5, -2, 49)
    z0 = parse_circuit(text).impedance(truth, freq)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        z = z0 * (1 + 0.002 * (rng.standard_normal(z0.size) + 1j * rng.standard_normal(z0.size)) / np.sqrt(2))
        every = fit_circuit(text, freq, z)
        early = fit_circuit(text, freq, z, good_chi2=lin_kk(freq, z)["chi2"])
        assert early.chi2 == pytest.approx(every.chi2, rel=1e-6)
        assert early.values[3] == pytest.approx(25.0, rel=0.02)
        out = analyze_spectrum(freq, z, EisSettings())
        assert out["best_circuit"] == text
        assert out["charge_transfer_resistance_ohm"] == pytest.approx(25.0, rel=0.02)


def test_noisy_spectrum_gives_rct_cdl_within_2_percent_and_d_from_sigma_within_5():
    for seed in range(3):
        out = analyze_spectrum(FREQ, spectrum(noise=0.002, seed=seed),
                               EisSettings(particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH))
        assert out["charge_transfer_resistance_ohm"] == pytest.approx(60.0, rel=0.02)
        assert out["double_layer_capacitance_farad"] == pytest.approx(20e-6, rel=0.02)
        assert out["series_resistance_ohm"] == pytest.approx(5.0, rel=0.02)
        assert out["diffusion_coefficient_cm2_s"] == pytest.approx(D * 1e4, rel=0.05, abs=0)
        assert out["diffusion_coefficient_graphical_cm2_s"] == pytest.approx(D * 1e4, rel=0.05, abs=0)
        sigma = abs(SLOPE / Q_TH) * TAU / 3 / np.sqrt(2 * TAU)  # A/√(2τ)
        assert out["warburg_coefficient_ohm_s_half"] == pytest.approx(sigma, rel=0.02, abs=0)
        assert out["diffusion_coefficient_stderr_cm2_s"] > 0
        assert out["charge_transfer_resistance_stderr_ohm"] > 0


def test_lin_kk_passes_clean_data_and_flags_drift():
    assert lin_kk(FREQ, spectrum())["max_residual"] < 0.005
    drifted = spectrum()
    half = FREQ.size // 2
    drifted[half:] *= np.linspace(1.0, 1.1, FREQ.size - half)  # the cell drifted during the low-f half
    out = analyze_spectrum(FREQ, drifted, EisSettings())
    assert "kk_invalid" in out["flags"] and not out["valid"]


def test_activation_energy_with_and_without_the_rt_correction():
    t = np.array([273.15, 283.15, 298.15, 313.15, 328.15])
    r = arrhenius_rct(t, ea=55e3, r_ct_ref=60.0)
    ea, se = activation_energy(t, r / t)
    assert ea == pytest.approx(55e3, abs=1.0)
    naive, _ = activation_energy(t, r)
    assert naive == pytest.approx(55e3 - GAS_CONSTANT / np.mean(1 / t), abs=20.0)  # E_a − R·T̄, ~2.5 kJ/mol low
    assert se < 1.0


def test_temperature_series_through_the_operators_gives_ea_within_1_kj_mol():
    """EIS steps at five chamber temperatures, streamed through the default operators."""
    ops = operators_for(Cell(particle_radius=RP))
    temps = np.array([10.0, 17.5, 25.0, 32.5, 40.0])
    r_ct = arrhenius_rct(temps + 273.15, ea=48e3, r_ct_ref=60.0)
    rows, t0, seq = [], 0.0, 0
    for k, (tc, rc) in enumerate(zip(temps, r_ct, strict=True)):
        f = np.logspace(5, -1, 49)
        z = spectrum(noise=0.001, seed=k, r_ct=rc, freq=f)
        cols = {"test_time_second": t0 + np.arange(f.size), "voltage_volt": np.full(f.size, 0.5),
                "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
                "imaginary_impedance_ohm": z.imag, "temperature_t1_celsius": np.full(f.size, tc),
                "cycle_count": np.ones(f.size), "step_count": np.full(f.size, k + 1.0)}
        for ev in (Event("step_start", t0, 1, k + 1, seq, {"technique": "eis", "step_type": "EIS"}),):
            for op in ops:
                rows += op.feed_event(ev)
        for op in ops:
            rows += op.feed_samples(cols)
        seq += f.size
        t0 += f.size
        for op in ops:
            rows += op.feed_event(Event("step_end", t0, 1, k + 1, seq, {"reason": "complete"}))
    eis = [r for r in rows if r.kind == "eis"]
    arr = [r for r in rows if r.kind == "arrhenius"]
    assert len(eis) == 5 and len(arr) == 4
    assert eis[0].data["temperature_kelvin"] == pytest.approx(283.15)
    assert arr[-1].data["activation_energy_kj_mol"] == pytest.approx(48.0, abs=1.0)
    assert arr[-1].data["activation_energy_stderr_kj_mol"] < 1.0


def test_eis_operator_ignores_other_steps():
    op = EisOperator()
    assert op.feed_event(Event("step_start", 0.0, 1, 1, 0, {"technique": "gcd"})) == []
    assert op.feed_samples({"test_time_second": np.arange(3.0), "voltage_volt": np.ones(3),
                            "current_ampere": np.ones(3)}) == []
    assert op.feed_event(Event("run_end", 3.0, 1, 1, 3, {})) == []


@pytest.mark.parametrize("circuit, values", [("R0-W1", [5.0, 6.0]), ("R0-Wo1", [5.0, 400.0, 2000.0]),
                                             ("R0-Ws1", [5.0, 400.0, 2000.0]), ("R0-Sph1", [5.0, 400.0, 2000.0])])
def test_warburg_coefficient_of_each_element_is_its_high_frequency_slope(circuit, values):
    c = parse_circuit(circuit)
    w = np.logspace(4, 6, 9) / 2000.0  # ωτ = 10⁴..10⁶
    z = c.impedance(values, w / (2 * np.pi))
    slope = np.polyfit(1 / np.sqrt(w), z.real, 1)[0]
    fit = fit_circuit(c, w / (2 * np.pi), z, guess=values)
    sigma, se, element = warburg_coefficient(fit)
    assert element == c.names[1].split("_")[0]
    assert sigma == pytest.approx(slope, rel=2e-2, abs=0)
    assert np.isfinite(se) and se >= 0


def test_warburg_sigma_error_follows_the_fit_covariance_and_no_diffusion_element_falls_back_to_graphical():
    out = analyze_spectrum(FREQ, spectrum(noise=0.002, seed=1),
                           EisSettings(particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH))
    best = next(f for f in out["fits"] if f["circuit"] == out["best_circuit"])
    a, tau = best["parameters"]["Sph1_A"], best["parameters"]["Sph1_tau"]
    assert out["warburg_coefficient_ohm_s_half"] == pytest.approx(a / np.sqrt(2 * tau), rel=1e-12)
    # the independent-errors bound is wider than the covariance error (A and τ correlate positively)
    bound = np.hypot(best["stderr"]["Sph1_A"] / a, 0.5 * best["stderr"]["Sph1_tau"] / tau)
    assert 0 < out["warburg_coefficient_stderr_ohm_s_half"] / out["warburg_coefficient_ohm_s_half"] < bound
    tight = analyze_spectrum(FREQ, spectrum(noise=0.002, seed=1),
                             EisSettings(particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH,
                                         warburg_disagreement=1e-4))
    assert "warburg_graphical_disagrees" in tight["flags"] and tight["valid"]
    assert "warburg_graphical_disagrees" not in out["flags"]
    arc_only = analyze_spectrum(FREQ, spectrum(), EisSettings(
        particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH,
        circuits=(("R0-p(R1,C1)", {"series_resistance_ohm": "R0", "charge_transfer_resistance_ohm": "R1"}),)))
    assert "warburg_graphical_only" in arc_only["flags"]
    assert arc_only["warburg_coefficient_ohm_s_half"] == arc_only["warburg_coefficient_graphical_ohm_s_half"]
    assert arc_only["warburg_coefficient_stderr_ohm_s_half"] is None
    assert arc_only["diffusion_coefficient_cm2_s"] == arc_only["diffusion_coefficient_graphical_cm2_s"]


def test_a_trial_step_with_tau_or_q_underflowing_to_zero_is_a_non_finite_residual_not_an_error():
    """ln τ (or ln Q) far negative: τ = 0 exactly; the derivative in τ is then not finite and the
    evaluation must say so (residual 10^6, derivative 0) rather than raise."""
    from cyclerctl.analysis.circuit_kernel import residuals_into

    freq = np.logspace(5, -2, 20)
    for text, p, k in (("R0-p(R1-Sph1,C1)", [5.0, 60.0, 900.0, 2000.0, 2e-5], 3),
                       ("R0-p(R1,CPE1)", [5.0, 60.0, 2e-5, 0.9], 2)):
        c = parse_circuit(text)
        z = c.impedance(p, freq)
        is_alpha = np.array([n.endswith("_alpha") for n in c.names])
        x = np.where(is_alpha, p, np.log(p))
        x[k] = -800.0  # exp(-800) = 0.0
        r, jac = np.empty(2 * freq.size), np.empty((len(p), 2 * freq.size))
        dz = np.empty((len(p), freq.size), dtype=complex)
        residuals_into(c.program, 2 * np.pi * freq, x, is_alpha, z, 1 / np.abs(z), dz, r, jac)
        assert np.all(np.isfinite(r)) and np.all(np.isfinite(jac))
        assert np.any(r == 1e6) or np.all(jac[k] == 0.0)


def _series(kind, n=6, noise=0.002, seed=11):
    """Similar spectra one after the other (an EIS after every cycle): R_ct rising 8 % each."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        if kind == "two-arc":  # the coin half cell: counter-electrode arc, then the working electrode
            freq = np.logspace(5, -2, 49)
            z = parse_circuit("R0-p(R1,C1)-p(R2-Sph1,C2)").impedance(
                [4.0, 6.0, 1.5e-6, 25.0 * 1.08 ** k, 900.0, 2000.0, 2e-5], freq)
        else:  # one arc: the two-arc circuits have more elements than the spectrum shows
            freq = np.logspace(5, -2, 57)
            z = randles_sphere_impedance(freq, r_s=5.0, r_ct=60.0 * 1.08 ** k, c_dl=20e-6, ocv_slope=SLOPE,
                                         tau_d=TAU, q_th=Q_TH)
        out.append((freq, z * (1 + noise * (rng.standard_normal(z.size) + 1j * rng.standard_normal(z.size))
                               / np.sqrt(2))))
    return out


@pytest.mark.parametrize("kind", ["two-arc", "one-arc"])
def test_warm_started_fits_equal_the_cold_fits_on_a_spectrum_series(kind, monkeypatch):
    """Each circuit started from its fit to the spectrum before: every fit has the χ² of the cold
    multi-start fit (to the fit tolerance), the best circuit and its R_s, R_ct, C_dl are the same, and
    fewer spectra needed the starts read off the spectrum."""
    from cyclerctl.analysis import circuits

    calls = [0]
    starts = circuits._starts

    def counted(*a):
        calls[0] += 1
        return starts(*a)

    monkeypatch.setattr(circuits, "_starts", counted)
    series = _series(kind)
    settings = EisSettings(particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH)
    cold = [analyze_spectrum(f, z, settings) for f, z in series]
    n_cold, calls[0] = calls[0], 0
    warm_starts: dict = {}
    warm = [analyze_spectrum(f, z, settings, warm_starts) for f, z in series]
    assert calls[0] < n_cold if kind == "two-arc" else calls[0] <= n_cold
    assert warm_starts  # circuits at the Lin-KK level were kept for the next spectrum
    for a, b in zip(cold, warm, strict=True):
        for fa, fb in zip(a["fits"], b["fits"], strict=True):
            assert fb["chi2"] == pytest.approx(fa["chi2"], rel=1e-6), fa["circuit"]
        assert b["best_circuit"] == a["best_circuit"]
        for key in ("series_resistance_ohm", "charge_transfer_resistance_ohm", "double_layer_capacitance_farad",
                    "diffusion_coefficient_cm2_s"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_a_bad_previous_start_still_gives_the_cold_fit():
    """A previous fit from a very different spectrum (R_ct ×10, C_dl ÷10, τ ×100), a nonsense point and
    a malformed one: each falls back to the cold starts, and the result is the cold fit itself."""
    text = "R0-p(R1,C1)-p(R2-Sph1,C2)"
    freq, z = _series("two-arc", n=1)[0]
    good = lin_kk(freq, z)["chi2"]
    cold = fit_circuit(text, freq, z, good_chi2=good)
    other = parse_circuit(text).impedance([4.0, 6.0, 1.5e-6, 250.0, 900.0, 2e5, 2e-6], freq)
    far = fit_circuit(text, freq, other, good_chi2=lin_kk(freq, other)["chi2"]).values
    for bad in (far, np.ones(7), np.full(7, 1e30), [4.0, 6.0, -1.0, 25.0, 900.0, 2000.0, 2e-5], np.ones(3)):
        fit = fit_circuit(text, freq, z, good_chi2=good, previous=bad)
        np.testing.assert_array_equal(fit.values, cold.values)
        assert fit.chi2 == cold.chi2
    near = fit_circuit(text, freq, z, good_chi2=good, previous=cold.values * 1.05)  # and a good one is taken
    np.testing.assert_allclose(near.values, cold.values, rtol=1e-6)


def test_eis_series_through_the_operator_does_not_depend_on_block_splits():
    """The warm starts change only at the end of a sweep: the rows of an EIS series are the same for
    one block per spectrum and for blocks of 7 samples."""
    series = _series("two-arc", n=4)

    def rows(block):
        op, out, seq = EisOperator(EisSettings()), [], 0
        for k, (f, z) in enumerate(series):
            op.feed_event(Event("step_start", float(seq), 1, k + 1, seq, {"technique": "eis", "step_type": "EIS"}))
            cols = {"test_time_second": seq + np.arange(f.size, dtype=float), "voltage_volt": np.full(f.size, 0.5),
                    "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
                    "imaginary_impedance_ohm": z.imag, "temperature_t1_celsius": np.full(f.size, 25.0)}
            for a in range(0, f.size, block):
                op.feed_samples({key: v[a:a + block] for key, v in cols.items()})
            seq += f.size
            out += op.feed_event(Event("step_end", float(seq), 1, k + 1, seq, {"reason": "complete"}))
        return out

    whole, small = rows(1000), rows(7)
    assert len(whole) == len(small) == len(series)
    for a, b in zip(whole, small, strict=True):
        for fa, fb in zip(a.data["fits"], b.data["fits"], strict=True):
            assert fa["parameters"] == fb["parameters"] and fa["chi2"] == fb["chi2"]
        assert a.data["charge_transfer_resistance_ohm"] == b.data["charge_transfer_resistance_ohm"]
