"""Galvanostatic cycling straight on the model (no engine): the measurements presets are held to.

Used by the preset tests, the speed benchmark and calibration: one call per half cycle, whole
half cycles computed by the compiled stepper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..program import End
from .model import CellModel


@dataclass
class HalfCycle:
    charge: float  # C, |charge passed|
    duration: float  # s
    samples: int
    voltage: np.ndarray
    capacity: np.ndarray  # C passed so far, per sample


@lru_cache(maxsize=64)
def _ends(op: str, cutoff: float) -> tuple[End, End]:
    return End("voltage", op, cutoff), End("step_time", ">=", 400 * 3600.0)


def half_cycle(model: CellModel, current: float, cutoff: float, every: float | None = 10.0,
               voltage_change: float | None = None, keep: bool = False) -> HalfCycle:
    """Hold `current` (A; < 0 sodiation) until the voltage reaches `cutoff` (V)."""
    op = "<=" if current < 0 else ">="
    ss = model.new_step()
    t0 = model.time
    ends = _ends(op, float(cutoff))
    n = 0
    volts, caps = [], []
    while True:
        r = model.run(ss, 0, current, np.inf, every=every, voltage_change=voltage_change, ends=ends)
        n += len(r.out)
        if keep:
            volts.append(r.out[:, 1])
            caps.append(np.abs(current) * (r.out[:, 0] - t0))
        if r.end is not None:
            break
    dur = model.time - t0
    v = np.concatenate(volts) if keep else np.empty(0)
    c = np.concatenate(caps) if keep else np.empty(0)
    return HalfCycle(abs(current) * dur, dur, n, v, c)


def cycle(model: CellModel, sodiation: float, desodiation: float, window: tuple[float, float],
          every: float | None = 10.0, keep: bool = False) -> tuple[HalfCycle, HalfCycle]:
    """One cycle of an anode half cell: sodiate at `sodiation` A (< 0) to window[0], then desodiate at
    `desodiation` A (> 0) to window[1]."""
    d = half_cycle(model, -abs(sodiation), window[0], every, keep=keep)
    c = half_cycle(model, abs(desodiation), window[1], every, keep=keep)
    return d, c
