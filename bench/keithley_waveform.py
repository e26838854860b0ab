"""Accuracy of waveform EIS on the Keithley 2450: the driver against the simulated SMU over TCP
(pyvisa-py), demodulated, vs the cell model's own linearised impedance at the same state.

  PYTHONPATH=src python bench/keithley_waveform.py [--speed 20] [--spp 64] [--periods 2]
      [--from 0.5 --to 0.01 --per-decade 2] [--mode galvanostatic] [--point]

--reference: no SMU: the cell model driven in-process by a quasi-continuous sine (--spp stairs per period,
the current sampled at each stair's middle), to check the simulated time stepping against the model's
linearised impedance; --unformed: the cell on its first sodiation (SEI forming).
--point: for comparison, each stair sampled instead of integrated: one 0.01 PLC reading as the level
changes (the stair value and a point reading of the current).
Prints per frequency |Z| error (%) and phase error (degrees)."""

from __future__ import annotations

import argparse
import asyncio
import cmath
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "drivers"))

from instrument_servers import keithley_server  # noqa: E402

from cyclerctl.analysis.waveform import WaveformImpedance  # noqa: E402
from cyclerctl.channel import StepStart  # noqa: E402
from cyclerctl.clock import WallClock  # noqa: E402
from cyclerctl.drivers import keithley_waveform  # noqa: E402
from cyclerctl.drivers.keithley2450 import Keithley2450Channel  # noqa: E402
from cyclerctl.program import Impedance, Limits  # noqa: E402
from cyclerctl.sim.plant import Plant  # noqa: E402


def rested_plant(formed: bool = True) -> Plant:
    """The hard-carbon cell at 0.5 V after a 6 h rest. formed: after a formation cycle (0.05 A/g
    down to 0.01 V and up to 1.5 V, then down to 0.5 V), the SEI complete; else partly sodiated on its
    first discharge (0.05 A/g for 1 h), a third of any cathodic current still going into the SEI."""
    p = Plant("hard_carbon", noise=False)
    i = 0.05 * p.model.cell.active_mass * 1e3
    if formed:
        for current, stop in ((-i, lambda v: v <= 0.01), (i, lambda v: v >= 1.5), (-i, lambda v: v <= 0.5)):
            while not stop(p.advance_current(current, 30.0)):
                pass
    else:
        p.advance_current(-i, 3600.0)
    p.advance_open(6 * 3600.0)
    return p


async def measure(f_from: float, f_to: float, per_decade: int, speed: float, spp: int, periods: int,
                  mode: str = "potentiostatic", amplitude: float = 5e-3) -> list[tuple[float, complex, complex]]:
    """(f, Z measured, Z of the model) per frequency of one waveform EIS step on the rested cell (the
    model's Z at the state just before the step; the cell at OCV barely moves during it)."""
    plant = rested_plant()
    step = Impedance(step_id=0, name="eis", mode=mode, freq_start=f_from, freq_stop=f_to, points_per_decade=per_decade,
                     amplitude=amplitude, acquisition="waveform", samples_per_period=spp, periods=periods,
                     limits=Limits(voltage_min=-0.05, voltage_max=3.0, current_max=5e-3))
    with keithley_server(speed, plant=plant) as (_dev, resource):
        ch = Keithley2450Channel(resource, WallClock(speed), timeout=2.0)
        await ch.open()
        try:
            z_ref = plant.impedance(step.frequencies())
            demod = WaveformImpedance()
            async for block in ch.run_step(step, StepStart(0.0)):
                demod.feed(block.columns)
            points = demod.close()
        finally:
            await ch.close()
    ref = dict(zip(step.frequencies(), z_ref, strict=True))
    if demod.dropped:
        print(f"{demod.dropped} frequencies dropped (too few samples after settling)")
    return [(p.frequency_hertz, p.impedance_ohm, complex(ref[p.frequency_hertz])) for p in points]


def reference(freqs: list[float], stairs: int, periods: int, formed: bool) -> list[tuple[float, complex, complex]]:
    out = []
    for f in freqs:
        plant = rested_plant(formed)
        z_ref = complex(plant.impedance([f])[0])
        v0 = plant.advance_open(1.0)
        dt = 1.0 / (f * stairs)
        peak = math.sqrt(2) * 5e-3
        t, v, i = [], [], []
        for k in range((1 + periods) * stairs):
            level = v0 + peak * math.sin(2 * math.pi * (k + 0.5) / stairs)
            i.append(plant.advance_voltage(level, dt))
            t.append((k + 0.5) * dt)
            v.append(level)
        demod = WaveformImpedance()
        demod.feed({"test_time_second": np.array(t), "voltage_volt": np.array(v), "current_ampere": np.array(i),
                    "frequency_hertz": np.full(len(t), f)})
        [pt] = demod.close()
        out.append((f, pt.impedance_ohm, z_ref))
    return out


def point_scheme() -> None:
    """One 0.01 PLC reading per stair as its level changes (no budget left for a longer one)."""
    keithley_waveform.FILL = 1e-3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--periods", type=int, default=2)
    ap.add_argument("--from", dest="f_from", type=float, default=0.5)
    ap.add_argument("--to", dest="f_to", type=float, default=0.01)
    ap.add_argument("--per-decade", type=int, default=2)
    ap.add_argument("--mode", default="potentiostatic")
    ap.add_argument("--point", action="store_true")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--unformed", action="store_true")
    a = ap.parse_args()
    if a.point:
        point_scheme()
    cpu = time.process_time()
    if a.reference:
        freqs = Impedance(step_id=0, name="f", freq_start=a.f_from, freq_stop=a.f_to,
                          points_per_decade=a.per_decade).frequencies()
        rows = reference(freqs, a.spp, a.periods, not a.unformed)
        print(f"reference: the cell model, {a.spp} stairs per period, {'unformed' if a.unformed else 'formed'}")
        _table(rows)
        return
    rows = asyncio.run(measure(a.f_from, a.f_to, a.per_decade, a.speed, a.spp, a.periods, a.mode, 5e-3 if a.mode == "potentiostatic" else 20e-6))
    print(f"speed {a.speed:g}, {a.spp} samples/period, {a.periods} periods, {a.mode}"
          f"{', point readings' if a.point else ''}; CPU {time.process_time() - cpu:.1f} s")
    _table(rows)


def _table(rows: list[tuple[float, complex, complex]]) -> None:
    print(f"{'f/Hz':>8} {'|Z| model/ohm':>14} {'phase model/deg':>16} {'|Z| err/%':>10} {'phase err/deg':>14}")
    for f, z, zr in rows:
        print(f"{f:8.4g} {abs(zr):14.4g} {math.degrees(cmath.phase(zr)):16.3f} "
              f"{100 * (abs(z) / abs(zr) - 1):10.3f} {math.degrees(cmath.phase(z / zr)):14.3f}")


if __name__ == "__main__":
    main()
