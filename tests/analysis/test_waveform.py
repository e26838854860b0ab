"""Impedance from the sampled waveform: the demodulator recovers Z exactly from a clean sine on a
drifting DC level at any sampling times, leaves the settling period out, gives the same point for
any block split, reports the second harmonic and a standard error that matches the scatter of
noisy points; the EIS operator fits a waveform step as it fits an analyser's spectrum."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.eis import EisOperator
from cyclerctl.analysis.synthetic import randles_sphere_impedance, sine_response
from cyclerctl.analysis.waveform import WaveformImpedance

FREQ = np.logspace(4, -2, 25)
Z = randles_sphere_impedance(FREQ, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)


def points(cols, settle=1.0, size=None):
    w = WaveformImpedance(settle)
    n = cols["test_time_second"].size
    for a in range(0, n, size or n):
        w.feed({k: v[a:a + (size or n)] for k, v in cols.items()})
    return w.close(), w


@pytest.mark.parametrize("galvanostatic", [True, False])
def test_clean_sine_on_a_drifting_level_gives_z_exactly(galvanostatic):
    cols = sine_response(FREQ, Z, amplitude=2e-5 if galvanostatic else 5e-3, samples_per_period=32, periods=3,
                         galvanostatic=galvanostatic, v_dc=0.45, i_dc=0.0, drift=-2e-6)
    pts, w = points(cols)
    assert len(pts) == FREQ.size and w.dropped == 0
    z = np.array([p.impedance_ohm for p in pts])
    np.testing.assert_allclose(z, Z, rtol=1e-9)
    assert [p.samples for p in pts] == [3 * 32] * FREQ.size  # the settling period is left out
    # the residual comes from running sums (Σx² − x̂·b): its floor is about √ε ≈ 1.5e-8
    assert max(p.harmonic for p in pts) < 1e-9 and max(p.residual for p in pts) < 1e-6


def test_irregular_sampling_times_still_give_z():
    """Least squares over the samples' own times: jittered, non-uniform sampling is no DFT, but the fit
    is still exact for a sine."""
    rng = np.random.default_rng(3)
    cols = sine_response(FREQ, Z, amplitude=5e-3, samples_per_period=24, periods=4, galvanostatic=False, v_dc=0.5)
    dt = np.diff(cols["test_time_second"]).min()
    shift = rng.uniform(-0.3, 0.3, cols["test_time_second"].size) * dt
    f, t = cols["frequency_hertz"], cols["test_time_second"] + shift
    # the samples at the jittered times, computed from the phasors directly
    first = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
    t0 = np.repeat(t[first], np.diff(np.r_[first, t.size]))
    zz = np.repeat(Z, np.diff(np.r_[first, t.size]))
    ph = 2 * np.pi * f * (t - t0)
    cols = {"test_time_second": t, "frequency_hertz": f, "voltage_volt": 0.5 + np.sqrt(2) * 5e-3 * np.sin(ph),
            "current_ampere": np.sqrt(2) * 5e-3 / np.abs(zz) * np.sin(ph - np.angle(zz))}
    pts, _ = points(cols)
    np.testing.assert_allclose([p.impedance_ohm for p in pts], Z, rtol=1e-9)


def test_any_block_split_gives_bit_identical_points():
    rng = np.random.default_rng(5)
    cols = sine_response(FREQ, Z, amplitude=5e-3, samples_per_period=16, periods=2, galvanostatic=False, v_dc=0.5)
    cols["current_ampere"] = cols["current_ampere"] * (1 + 1e-3 * rng.standard_normal(cols["current_ampere"].size))
    whole, _ = points(cols)
    n = cols["test_time_second"].size
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, n), size=40, replace=False))
        w = WaveformImpedance()
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
            w.feed({k: v[a:b] for k, v in cols.items()})
        np.testing.assert_equal([astuple(p) for p in w.close()], [astuple(p) for p in whole])  # NaN == NaN
    ones, _ = points(cols, size=1)  # real-time acquisition: every sample its own block
    np.testing.assert_equal([astuple(p) for p in ones], [astuple(p) for p in whole])


def test_the_settling_period_is_left_out():
    """A transient in the first period of each frequency (the cell settling onto the sine) does not move
    Z; counting it in would."""
    cols = sine_response(FREQ, Z, amplitude=5e-3, samples_per_period=32, periods=3, galvanostatic=False, v_dc=0.5)
    f = cols["frequency_hertz"]
    first = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
    u = (cols["test_time_second"] - np.repeat(cols["test_time_second"][first], np.diff(np.r_[first, f.size]))) * f
    cols["current_ampere"] = cols["current_ampere"] + np.where(u < 1 - 1e-6, 1e-4 * np.exp(-5 * u), 0.0)
    np.testing.assert_allclose([p.impedance_ohm for p in points(cols)[0]], Z, rtol=1e-9)
    off = np.array([p.impedance_ohm for p in points(cols, settle=0.0)[0]])
    assert np.max(np.abs(off / Z - 1)) > 0.01


def test_second_harmonic_is_reported_and_does_not_bias_z():
    cols = sine_response(FREQ, Z, amplitude=5e-3, samples_per_period=32, periods=3, galvanostatic=False, v_dc=0.5)
    f = cols["frequency_hertz"]
    first = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
    reps = np.diff(np.r_[first, f.size])
    u = (cols["test_time_second"] - np.repeat(cols["test_time_second"][first], reps)) * f
    amp = np.repeat(np.sqrt(2) * 5e-3 / np.abs(Z), reps)
    cols["current_ampere"] = cols["current_ampere"] + 0.08 * amp * np.cos(4 * np.pi * u + 0.3)
    pts, _ = points(cols)
    np.testing.assert_allclose([p.harmonic for p in pts], 0.08, rtol=1e-7)
    np.testing.assert_allclose([p.impedance_ohm for p in pts], Z, rtol=1e-9)


def test_relative_error_matches_the_scatter_of_noisy_points():
    """The reported standard error of |Z| against the scatter of |Z| over 200 noise draws."""
    rng = np.random.default_rng(11)
    f1, z1 = FREQ[[3]], Z[[3]]
    clean = sine_response(f1, z1, amplitude=2e-5, samples_per_period=32, periods=4, v_dc=0.5)
    mags, errs = [], []
    for _ in range(200):
        cols = dict(clean)
        cols["voltage_volt"] = clean["voltage_volt"] + rng.normal(0, 2e-5, clean["voltage_volt"].size)
        (p,), _ = points(cols)
        mags.append(abs(p.impedance_ohm) / abs(z1[0]) - 1)
        errs.append(p.relative_error)
    assert np.std(mags) == pytest.approx(np.mean(errs), rel=0.25)
    assert abs(np.mean(mags)) < 3 * np.std(mags) / np.sqrt(200) + 1e-12  # no bias beyond the scatter


def test_a_segment_shorter_than_a_period_is_dropped_and_counted():
    cols = sine_response(FREQ[:3], Z[:3], amplitude=5e-3, samples_per_period=32, periods=2, galvanostatic=False)
    keep = np.ones(cols["test_time_second"].size, bool)
    keep[32 + 16:96] = False  # the first frequency keeps half a period after settling
    pts, w = points({k: v[keep] for k, v in cols.items()})
    assert [p.frequency_hertz for p in pts] == list(FREQ[1:3]) and w.dropped == 1


def feed(op, cols, data, step=1):
    rows = op.feed_event(Event("step_start", 0.0, 1, step, 0, data))
    n = cols["test_time_second"].size
    for a in range(0, n, 1000):
        rows += op.feed_samples({k: v[a:a + 1000] for k, v in cols.items()})
    return rows + op.feed_event(Event("step_end", float(cols["test_time_second"][-1]), 1, step, n, {}))


def test_eis_operator_fits_a_waveform_step_as_it_fits_the_spectrum():
    f = np.logspace(5, -2, 57)
    z = randles_sphere_impedance(f, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
    wave = sine_response(f, z, amplitude=5e-3, samples_per_period=32, periods=3, galvanostatic=False, v_dc=0.5,
                         drift=1e-6)
    wave["temperature_t1_celsius"] = np.full(wave["voltage_volt"].size, 25.0)
    (w,) = feed(EisOperator(), wave, {"technique": "eis", "acquisition": "waveform"})
    spec = {"test_time_second": np.arange(f.size, dtype=float), "voltage_volt": np.full(f.size, 0.5),
            "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
            "imaginary_impedance_ohm": z.imag}
    (s,) = feed(EisOperator(), spec, {"technique": "eis"})
    w, s = w.data, s.data
    assert (w["acquisition"], s["acquisition"]) == ("waveform", "spectrum")
    np.testing.assert_allclose(np.array(w["real_impedance_ohm"]) + 1j * np.array(w["imaginary_impedance_ohm"]), z,
                               rtol=1e-7)
    assert w["valid"] and not w["flags"] and s["valid"]
    # on noise-free data the circuits' AICs are a tie broken by rounding, so the circuit may differ; the
    # cell's elements may not
    for key in ("series_resistance_ohm", "charge_transfer_resistance_ohm", "double_layer_capacitance_farad"):
        assert w[key] == pytest.approx(s[key], rel=1e-3)
    assert w["charge_transfer_resistance_ohm"] == pytest.approx(60, rel=0.02)
    assert w["double_layer_capacitance_farad"] == pytest.approx(2e-5, rel=0.02)
    assert w["temperature_kelvin"] == pytest.approx(298.15) and w["potential_volt"] == pytest.approx(0.5, abs=1e-3)
    assert w["waveform_samples"] == [96] * f.size and w["waveform_points_dropped"] == 0


def test_eis_operator_flags_a_nonlinear_response():
    f = np.logspace(3, -2, 26)
    z = randles_sphere_impedance(f, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
    wave = sine_response(f, z, amplitude=5e-3, samples_per_period=32, periods=3, galvanostatic=False, v_dc=0.5)
    # a response with 10 % second harmonic: the amplitude is too large for the cell
    i = wave["current_ampere"]
    wave["current_ampere"] = i + 0.1 * np.sqrt(2) * (i ** 2 / np.abs(i).max() - 0.5 * np.abs(i).max())
    (row,) = feed(EisOperator(), wave, {"technique": "eis"})
    assert "waveform_nonlinear" in row.data["flags"] and not row.data["valid"]
    assert row.data["waveform_max_harmonic"] > 0.05


def test_a_pause_inside_a_frequency_gives_two_pieces_merged_into_one_point():
    """Samples of one frequency broken by a pause (the later ones shifted by 1000 s: the phase goes on in
    step time, not in test time): each piece leaves out its own settling period and the two are merged,
    weighted by their samples."""
    f1, z1 = FREQ[[5]], Z[[5]]
    cols = sine_response(f1, z1, amplitude=5e-3, samples_per_period=32, periods=5, galvanostatic=False, v_dc=0.5)
    cut = 32 * 3 + 7  # inside the fourth period
    cols["test_time_second"] = cols["test_time_second"] + np.where(np.arange(cols["test_time_second"].size) >= cut,
                                                                   1000.0, 0.0)
    (p,), w = points(cols)
    assert p.impedance_ohm == pytest.approx(z1[0], rel=1e-9) and w.dropped == 0
    assert p.samples == (cut - 32) + (6 * 32 - cut - 32)  # each piece without its first period
    (whole,), _ = points(sine_response(f1, z1, amplitude=5e-3, samples_per_period=32, periods=5,
                                       galvanostatic=False, v_dc=0.5))
    assert whole.samples == 5 * 32  # unbroken: one piece, one settling period
