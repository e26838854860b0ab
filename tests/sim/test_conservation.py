"""Charge conservation: the integrated current equals the change of Na held by the working electrode
(particles + SEI + trapped in faded material) plus the double-layer charge, to 1e-9 relative."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cyclerctl.program import End
from cyclerctl.sim.model import CellModel
from cyclerctl.sim.preset import load_preset


@pytest.mark.parametrize("name", ["hard_carbon", "nano_sn", "sn_hc"])
def test_integrated_current_equals_stored_charge(name):
    preset = dataclasses.replace(load_preset(name), soft_short_after_cycles=2, soft_short_resistance=3e3)
    m = CellModel(preset)
    mass = m.cell.active_mass * 1e3
    n0 = m.inventory()
    dl0 = m.cp[2] * m.st[3]
    lo, hi = preset.window
    samples = []
    for _cycle in range(3):
        for current, cut in ((-0.3 * mass, lo), (0.3 * mass, hi)):
            ss = m.new_step()
            r = m.run(ss, 0, current, np.inf, every=30.0,
                      ends=(End("voltage", "<=" if current < 0 else ">=", cut), End("step_time", ">=", 20 * 3600.0)))
            samples.append(r.out)
        ss = m.new_step()
        samples.append(m.run(ss, 1, hi, m.time + 7200, rate=-(hi - 0.05) / 7200, every=30.0).out)  # a sweep
        ss = m.new_step()
        samples.append(m.run(ss, 1, 0.3, m.time + 3600, current_limit=1e-3, every=30.0).out)  # a hold
    tr = m.truth(np.concatenate(samples))
    passed = tr["charge_passed"][-1]
    short = tr["short_charge"][-1]
    stored = tr["stored_charge"][-1] - n0
    dl = tr["double_layer_charge"][-1] - dl0
    assert short > 0  # the soft short came on after two cycles and drained charge
    scale = np.abs(np.diff(tr["charge_passed"])).sum()
    assert abs((passed - short) - (-stored + dl)) < 1e-9 * scale
    # the SEI and trapped charge are part of it, and grew
    assert tr["sei_charge"][-1] > 0
    assert tr["trapped_charge"][-1] >= 0
