"""Debounced safety limits: a lone noisy sample does not trip, two in a row do (also across
blocks), a large excursion trips at once."""

from __future__ import annotations

import numpy as np

from cyclerctl.engine.safety import SafetyMonitor
from cyclerctl.program import Limits

LIM = Limits(voltage_min=0.0, voltage_max=2.5, current_max=5e-3, temperature_min=263.15,
             temperature_max=333.15, step_duration_max=100.0)


def cols(v, i=None, temp=None):
    v = np.asarray(v, float)
    c = {"voltage_volt": v, "current_ampere": np.zeros_like(v) if i is None else np.asarray(i, float)}
    if temp is not None:
        c["temperature_t1_celsius"] = np.asarray(temp, float)
    return c


def test_single_noisy_sample_does_not_trip():
    m = SafetyMonitor()
    assert m.check(LIM, cols([1.0, -0.01, 0.5, 0.2]), None) is None


def test_two_consecutive_samples_trip_at_the_second():
    trip = SafetyMonitor().check(LIM, cols([1.0, -0.01, -0.02, 0.5]), None)
    assert trip.limit == "voltage_min" and trip.index == 2 and trip.value == -0.02


def test_debounce_carries_across_blocks():
    m = SafetyMonitor()
    assert m.check(LIM, cols([1.0, 2.0, 2.51]), None) is None
    trip = m.check(LIM, cols([2.52, 2.0]), None)
    assert trip.limit == "voltage_max" and trip.index == 0


def test_large_excursion_trips_at_once():
    trip = SafetyMonitor().check(LIM, cols([1.0, -0.2, 0.5]), None)
    assert trip.limit == "voltage_min" and trip.index == 1


def test_current_temperature_and_duration():
    m = SafetyMonitor()
    assert m.check(LIM, cols([1, 1], i=[-6e-3, -4e-3]), None).limit == "current_max"
    assert SafetyMonitor().check(LIM, cols([1, 1], temp=[70.0, 20.0]), None).limit == "temperature_max"
    trip = SafetyMonitor().check(LIM, cols([1, 1]), np.array([99.0, 101.0]))
    assert trip.limit == "step_duration_max" and trip.index == 1
    assert "crossed" in trip.message and "101" in trip.message


def test_first_trip_by_sample_order():
    trip = SafetyMonitor().check(LIM, cols([1.0, 1.0, -0.3], i=[0, 9e-3, 0]), None)
    assert trip.limit == "current_max" and trip.index == 1


def test_one_sample_blocks_trip_where_one_block_does():
    """Real-time acquisition hands over one sample per block (the scalar path); the trip, its sample
    and the debounce carry match the same samples checked as one vectorized block."""
    rng = np.random.default_rng(7)
    for k in range(400):
        lim = LIM if k % 2 else Limits(voltage_min=0.0, voltage_max=2.5)
        n = 12
        v = rng.choice([1.0, -0.01, -0.03, -0.2, 2.51, 2.6, np.nan], n, p=[.55, .1, .1, .05, .1, .05, .05])
        i = rng.choice([0.0, 5.2e-3, -5.3e-3, 6e-3], n, p=[.7, .1, .1, .1])
        temp = rng.choice([25.0, 60.5, -10.5, 63.0], n, p=[.8, .08, .08, .04])
        st = np.cumsum(rng.uniform(0, 12, n))
        whole = SafetyMonitor().check(lim, cols(v, i, temp), st)
        m = SafetyMonitor()
        one = None
        for j in range(n):
            one = m.check(lim, cols(v[j:j + 1], i[j:j + 1], temp[j:j + 1]), st[j:j + 1])
            if one is not None:
                one = (one.limit, one.value, j)
                break
        assert one == (None if whole is None else (whole.limit, whole.value, whole.index))


def test_blocks_split_anywhere_trip_where_one_block_does():
    """The debounce carry of the block path: the same samples in two blocks split at any point trip
    at the same sample with the same value as in one block."""
    rng = np.random.default_rng(11)
    for _ in range(400):
        n = 12
        v = rng.choice([1.0, -0.01, -0.03, -0.2, 2.51, 2.6, np.nan], n, p=[.55, .1, .1, .05, .1, .05, .05])
        i = rng.choice([0.0, 5.2e-3, -5.3e-3, 6e-3], n, p=[.7, .1, .1, .1])
        temp = rng.choice([25.0, 60.5, -10.5, 63.0], n, p=[.8, .08, .08, .04])
        whole = SafetyMonitor().check(LIM, cols(v, i, temp), None)
        cut = int(rng.integers(1, n))
        m = SafetyMonitor()
        got = m.check(LIM, cols(v[:cut], i[:cut], temp[:cut]), None)
        if got is None:
            got = m.check(LIM, cols(v[cut:], i[cut:], temp[cut:]), None)
            got = None if got is None else (got.limit, got.value, got.index + cut)
        else:
            got = (got.limit, got.value, got.index)
        assert got == (None if whole is None else (whole.limit, whole.value, whole.index))


def test_impedance_rows_skip_the_voltage_limits_but_a_sampled_waveform_does_not():
    """An analyser's impedance rows carry no instantaneous voltage to hold to the window; the samples of
    a waveform acquisition (the excitation frequency but no impedance columns) are real voltages."""
    v = np.array([1.0, 2.52, 2.53, 1.0])  # two samples in a row above the window (debounced)
    f = np.full(4, 10.0)
    rows = {**cols(v), "frequency_hertz": f, "real_impedance_ohm": np.full(4, 5.0),
            "imaginary_impedance_ohm": np.full(4, -1.0)}
    assert SafetyMonitor().check(LIM, rows, None) is None
    trip = SafetyMonitor().check(LIM, {**cols(v), "frequency_hertz": f}, None)
    assert trip.limit == "voltage_max" and trip.index == 2
    one = SafetyMonitor()
    trips = [one.check(LIM, {**cols(v[k:k + 1]), "frequency_hertz": f[k:k + 1]}, None) for k in range(4)]
    assert trips[2] is not None and trips[2].limit == "voltage_max"
