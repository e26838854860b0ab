"""An EIS step recorded as a waveform, end to end on the simulator: the engine journals the raw
voltage and current, holds them to the safety window, and the live EIS operator's spectrum equals
the replay of the journal."""

from __future__ import annotations

import numpy as np
from helpers import journal, session

from cyclerctl.analysis.offline import analyze_journal
from cyclerctl.paths import data_dir
from cyclerctl.protocol import compile_file


async def test_waveform_eis_runs_journals_and_is_analysed_live_as_offline(run_dir):
    program = compile_file(data_dir("protocols") / "hc_eis_waveform.yaml")
    s = session(run_dir, [program], instrument="sim:hard_carbon", analysis=True)
    assert await s.execute() == {"ch1": "done"}
    samples, events, _, metrics = journal(run_dir)
    eis = np.isfinite(samples["frequency_hertz"])
    eis_step = [e for e in events if e.kind == "step_start" and e.data.get("step_type") == "EIS"][0]
    assert eis_step.data["acquisition"] == "waveform" and eis_step.data["samples_per_period"] == 64
    assert eis.sum() == 41 * 5 * 64 and not np.isfinite(samples["real_impedance_ohm"]).any()
    # a sine of 5 mV rms about the open-circuit potential
    v = samples["voltage_volt"][eis]
    assert 2 * np.sqrt(2) * 5e-3 * 0.9 < np.ptp(v[:64 * 5]) < 2 * np.sqrt(2) * 5e-3 * 1.5
    (live,) = [m for m in metrics if m["kind"] == "eis"]
    assert live["acquisition"] == "waveform" and live["valid"], live["flags"]
    assert len(live["frequency_hertz"]) == 41 and live["waveform_max_relative_error"] < 0.005
    assert 1 < live["charge_transfer_resistance_ohm"] < 1e3
    (offline,) = analyze_journal(run_dir / "journal.sqlite")["eis"]
    for key in ("charge_transfer_resistance_ohm", "double_layer_capacitance_farad", "series_resistance_ohm"):
        assert offline.data[key] == live[key]
    np.testing.assert_array_equal(offline.data["real_impedance_ohm"], live["real_impedance_ohm"])
