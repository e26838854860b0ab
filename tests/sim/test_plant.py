"""The synchronous plant behind the simulated instruments."""

from __future__ import annotations

import numpy as np
import pytest

from cyclerctl.sim import Plant


def test_plant_current_voltage_open_and_state():
    p = Plant("hard_carbon")
    v0 = p.voltage
    assert 1.0 < v0 < 1.5
    v = [p.advance_current(-1e-4, 600.0) for _ in range(5)]
    assert all(b < a for a, b in zip(v, v[1:], strict=False))  # sodiation: voltage falls
    ocv = p.advance_open(3600.0)
    assert ocv > v[-1]  # relaxes up after sodiation
    assert p.current == 0.0
    s = p.save_state()
    a = p.advance_current(1e-4, 100.0)
    p.load_state(s)
    assert p.advance_current(1e-4, 100.0) == a  # bit-for-bit after load
    i_hold = p.advance_voltage(ocv + 0.05, 60.0)
    assert i_hold > 0  # above OCV: desodiation current
    assert p.advance_voltage(ocv + 0.05, 0.0) == pytest.approx(i_hold, rel=0.2)


def test_plant_impedance_and_ambient():
    p = Plant("sn_hc")
    z = p.impedance([1e5, 10.0, 0.01])
    assert z.shape == (3,) and np.all(z.imag < 0)
    assert z[0].real < z[1].real < z[2].real
    p.set_ambient(273.15)
    p.advance_open(60.0)
    assert 273.15 < p.temperature < 298.15  # lags the air
    p.advance_open(3600.0)
    assert p.temperature == pytest.approx(273.15, abs=0.01)
    assert p.impedance([10.0])[0].real > z[1].real  # colder: slower kinetics


def test_plant_noise_is_seeded():
    a = Plant("hard_carbon", noise=True, seed=3)
    b = Plant("hard_carbon", noise=True, seed=3)
    va = [a.advance_current(-1e-4, 10.0) for _ in range(20)]
    vb = [b.advance_current(-1e-4, 10.0) for _ in range(20)]
    assert va == vb
    assert np.std(np.diff(va)) > 1e-5
