"""Hardware-in-the-loop latency of the host-stepped Keithley 2450 path, over a real TCP socket.

For each trial a 1C discharge runs on the simulated Keithley (speed 1, real time) from 0.3 mV above a
0 V cutoff: the instrument records when the cell voltage crosses the cutoff (interpolated between
its model steps) and when the driver's "0 A" arrives; the table gives the time from the crossing to
the output going to 0 A and the cutoff overshoot (mV below the cutoff at that moment), with the
measured reading period (NPLC aperture + round trip) as the reference.

    .venv/bin/python bench/hil.py [--trials 10] [--nplc 1 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import numpy as np

from cyclerctl.channel import StepStart
from cyclerctl.clock import WallClock
from cyclerctl.drivers.keithley2450 import Keithley2450Channel
from cyclerctl.program import ConstantCurrent, End, Limits, Record
from cyclerctl.sim.instruments.keithley2450 import SimKeithley2450
from cyclerctl.sim.instruments.transport import TcpServer
from cyclerctl.sim.plant import Plant

CUTOFF = 0.0


class TracingKeithley(SimKeithley2450):
    """The simulated SMU, noting the cell voltage after every model step and when the output stopped."""

    def __init__(self, *a, **kw) -> None:
        self.trace: list[tuple[float, float]] = []
        self.t_zero_amps: float | None = None
        self.v_zero_amps: float | None = None
        super().__init__(*a, **kw)

    def _advance(self, until=None) -> None:
        super()._advance(until)
        if self.output:
            self.trace.append((self.cell.t, self.v))

    def _dispatch(self, key, query, arg):
        reply = super()._dispatch(key, query, arg)
        if key == "SOUR:CURR" and not query and float(arg) == 0.0 and self.t_zero_amps is None and self.trace:
            self.t_zero_amps, self.v_zero_amps = self.cell.t, self.v
        return reply


def crossing_time(trace: list[tuple[float, float]], level: float) -> float | None:
    for (t0, v0), (t1, v1) in zip(trace, trace[1:], strict=False):
        if v0 > level >= v1:
            return t0 + (t1 - t0) * (v0 - level) / (v0 - v1)
    return None


def near_cutoff_state(current: float) -> bytes:
    """The cell discharged at `current` until 0.3 mV above the cutoff (computed directly, no instrument)."""
    plant = Plant("hard_carbon", noise=False)
    dt = 5.0
    while True:
        state = plant.save_state()
        v = plant.advance_current(current, dt)
        if v <= CUTOFF + 0.0003:
            if dt < 0.05:
                plant.load_state(state)
                return plant.save_state()
            plant.load_state(state)
            dt /= 4


async def trial(state: bytes, current: float, nplc: float) -> dict:
    plant = Plant("hard_carbon", noise=False)
    plant.load_state(state)
    dev = TracingKeithley(plant, WallClock(1.0))
    dev.nplc = {"VOLT": nplc, "CURR": nplc}
    server = TcpServer(dev.on_line).start()
    try:
        ch = Keithley2450Channel(f"TCPIP0::127.0.0.1::{server.port}::SOCKET", WallClock(1.0), poll_period=0.0,
                                 nplc=nplc)
        await ch.open()
        step = ConstantCurrent(step_id=0, name="1C to 0 V", current=current, record=Record(every=0.0),
                               limits=Limits(voltage_min=-0.05, voltage_max=3.0),
                               ends=(End("voltage", "<=", CUTOFF), End("step_time", ">=", 120.0)))
        times = []
        async for block in ch.run_step(step, StepStart(0.0)):
            times.extend(block.columns["step_time_second"])
            if block.final:
                end = block.end
        await ch.close()
    finally:
        dev.stop.set()
        server.stop()
    t_cross = crossing_time(dev.trace, CUTOFF)
    if end != 0 or t_cross is None or dev.t_zero_amps is None:
        raise RuntimeError("the cutoff was not reached in the trial")
    return {"latency": dev.t_zero_amps - t_cross, "overshoot": (CUTOFF - dev.v_zero_amps) * 1e3,
            "period": float(np.median(np.diff(times))) if len(times) > 2 else float("nan")}


def pct(xs, q):
    return float(np.percentile(xs, q))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--nplc", type=float, nargs="+", default=[1.0, 0.1])
    args = ap.parse_args()
    one_c = Plant("hard_carbon").cell.one_c_current
    state = near_cutoff_state(-one_c)
    rows = []
    for nplc in args.nplc:
        results = [await trial(state, -one_c, nplc) for _ in range(args.trials)]
        lat = [r["latency"] * 1e3 for r in results]
        over = [r["overshoot"] for r in results]
        period = statistics.median(r["period"] for r in results) * 1e3
        rows.append((nplc, period, pct(lat, 50), pct(lat, 99), pct(over, 50), pct(over, 99), len(results)))
    print(f"Keithley 2450 (simulated, TCP loopback, speed 1): 1C discharge ({one_c * 1e3:.2f} mA) "
          f"to a {CUTOFF:g} V cutoff, hard_carbon cell")
    print(f"{'NPLC':>5} {'reading period ms':>18} {'cutoff->0 A p50 ms':>19} {'p99 ms':>8} "
          f"{'overshoot p50 mV':>17} {'p99 mV':>8} {'trials':>7}")
    for nplc, period, l50, l99, o50, o99, n in rows:
        print(f"{nplc:5g} {period:18.2f} {l50:19.2f} {l99:8.2f} {o50:17.4f} {o99:8.4f} {n:7d}")


if __name__ == "__main__":
    asyncio.run(main())
