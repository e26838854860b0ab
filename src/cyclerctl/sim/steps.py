"""Running one primitive program step on the cell model, as chunks of samples (synchronous).

Shared by SimChannel (which adds noise, the clock and Blocks) and by the estimator behind
`cyclerctl plan`. Each chunk is a dict of BDF columns (noise-free), the kernel rows (for truth),
the index of the end that fired, and whether the step is over.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InstrumentError
from ..program import (
    ConstantCurrent,
    ConstantVoltage,
    Impedance,
    Rest,
    SetTemperature,
    Step,
    Sweep,
)
from . import kernel as K
from .model import CellModel

KELVIN = 273.15
MAX_SPAN = 86400.0  # s of test time per block at most


@dataclass
class Chunk:
    """Samples of a step (noise-free, SI/BDF units)."""

    columns: dict[str, np.ndarray]
    rows: np.ndarray | None  # kernel rows (truth); None for impedance rows
    end: int | None
    final: bool


_PICK = np.array([K.C_T, K.C_V, K.C_I, K.C_STEP_T, K.C_TEMP])


def _columns(out: np.ndarray) -> dict[str, np.ndarray]:
    if len(out) == 1:  # a sample alone (real-time pacing): one copy, the columns are views of it
        row = out[:, _PICK]
        row[0, 4] -= KELVIN
        return {"test_time_second": row[:, 0], "voltage_volt": row[:, 1], "current_ampere": row[:, 2],
                "step_time_second": row[:, 3], "temperature_t1_celsius": row[:, 4]}
    return {
        "test_time_second": out[:, K.C_T].copy(),
        "voltage_volt": out[:, K.C_V].copy(),
        "current_ampere": out[:, K.C_I].copy(),
        "step_time_second": out[:, K.C_STEP_T].copy(),
        "temperature_t1_celsius": out[:, K.C_TEMP] - KELVIN,
    }


def eis_point_duration(frequency: float, step: Impedance | None = None) -> float:
    """Time an impedance point takes (s): two periods plus settling for a measured spectrum; one
    settling period and `step.periods` recorded ones for a sampled waveform."""
    if step is not None and step.acquisition == "waveform":
        return (1 + step.periods) / frequency
    return 2.0 / frequency + 0.2


def _aligned_stop(model: CellModel, ss: np.ndarray, span: float, every: float | None) -> float:
    """The end of a block: `span` from now, moved on to the time-record grid so a block boundary
    adds no sample of its own."""
    t = model.time + span
    if not math.isfinite(t) or not every:
        return t
    k = math.ceil((t - ss[K.S_REC_T]) / every - 1e-9)
    return ss[K.S_REC_T] + max(k, 1) * every


def _step_state(model: CellModel, resume: np.ndarray | None, step_time: float, step_charge: float,
                **kw) -> np.ndarray:
    """A fresh step state, or the saved one when it describes exactly this point of this step
    (a resumed run then continues bit-for-bit)."""
    if resume is not None and abs(model.time - resume[K.S_T0] - step_time) < 1e-6 and step_time > 0:
        ss = resume.copy()
        ss[K.S_FIRST] = 1.0
        ss[K.S_KEEP] = 1.0
        ss[K.S_CHARGE] = step_charge
        return ss
    return model.new_step(step_time, step_charge, **kw)


def run_step(model: CellModel, step: Step, test_time: float, step_time: float = 0.0,
             step_charge: float = 0.0, span: float = math.inf, max_samples: int = 100_000,
             sweep_position: float | None = None, resume: np.ndarray | None = None,
             holder: dict | None = None, first_alone: bool = False) -> Iterator[Chunk]:
    """Run `step` from `test_time` (the model rests through any gap before it). Yields Chunks, each
    spanning about `span` seconds, until one with final=True. `holder["ss"]` exposes the live step
    state (for save_state); `resume` is a saved one to continue from. first_alone: the sample taken
    at the start of a current, voltage or rest step comes as a chunk of its own (a channel paced on a
    wall clock hands it over at once instead of with the first block); the samples are the same."""
    holder = holder if holder is not None else {}
    span = min(span, MAX_SPAN)  # a step that records nothing still hands back a block now and then
    if test_time > model.time + 1e-9:
        gap = model.new_step(record_first=False)
        model.run(gap, 0, 0.0, test_time, max_samples=2)
    model.time = test_time
    rec = step.record
    common = dict(every=rec.every, voltage_change=rec.voltage_change, current_change=rec.current_change,
                  ends=step.ends, max_samples=max_samples)
    if isinstance(step, Impedance):
        yield from _impedance(model, step, step_time, span)
        return
    if isinstance(step, Sweep):
        yield from _sweep(model, step, step_time if sweep_position is None else sweep_position,
                          step_charge, span, common, resume, holder)
        return
    temp = None
    timeout = math.inf
    if isinstance(step, Rest):
        mode, target, limit = 0, 0.0, math.inf
    elif isinstance(step, ConstantCurrent):
        mode, target, limit = 0, float(step.current), math.inf
    elif isinstance(step, ConstantVoltage):
        mode, target, limit = 1, float(step.voltage), float(step.current_limit)
    elif isinstance(step, SetTemperature):
        mode, target, limit = 0, 0.0, math.inf
        model.set_chamber(step.temperature)
        temp = (step.tolerance, step.stable_for)
        timeout = step.timeout
    else:
        raise InstrumentError(f"the simulator cannot run a {type(step).__name__} step", "sim")
    ss = _step_state(model, resume, step_time, step_charge, temperature_step=temp)
    holder["ss"] = ss
    t_timeout = model.time - step_time + timeout
    first = first_alone and ss[K.S_FIRST] != 0.0
    advance = model.stepper(ss, mode, target, current_limit=limit, **common)
    while True:
        if first:  # a run to the present time records just the first sample
            t_stop, first = model.time, False
        else:
            t_stop = min(_aligned_stop(model, ss, span, rec.every), t_timeout)
        out, end, reason = advance(t_stop)
        if reason == K.R_STOP and model.time >= t_timeout - 1e-9:
            raise InstrumentError(f"chamber did not settle at {step.temperature - KELVIN:.1f} degC "
                                  f"(+-{step.tolerance:g} K) within {timeout:g} s", "sim")
        final = reason == K.R_END or reason == K.R_DONE
        yield Chunk(_columns(out), out, end, final)
        if final:
            return


def _sweep(model: CellModel, step: Sweep, position: float, step_charge: float, span: float,
           common: dict, resume: np.ndarray | None, holder: dict) -> Iterator[Chunk]:
    """Linear potential segments in order; samples carry the 0-based segment index. Each segment
    ends on a sample at its vertex."""
    segs = step.segments()
    bounds = np.cumsum([0.0] + [abs(b - a) / step.scan_rate for a, b in segs])
    t_begin = model.time - position
    ss = _step_state(model, resume, position, step_charge)
    holder["ss"] = ss
    k0 = int(np.searchsorted(bounds, position, side="right") - 1)
    for k in range(max(k0, 0), len(segs)):
        a, b = segs[k]
        rate = math.copysign(step.scan_rate, b - a) if b != a else 0.0
        ss[K.S_SEG_V0] = a
        ss[K.S_SEG_T0] = t_begin + bounds[k]
        seg_end = t_begin + bounds[k + 1]
        last = k == len(segs) - 1
        while True:
            t_stop = min(_aligned_stop(model, ss, span, common["every"]), seg_end)
            r = model.run(ss, 1, a, t_stop, rate=rate, **common)
            out = r.out
            seg_done = model.time >= seg_end - 1e-9
            cols = _columns(out)
            cols["sweep_segment"] = np.full(len(out), float(k))
            final = r.reason == K.R_END or (last and seg_done)
            yield Chunk(cols, out, r.end, final)
            if r.reason == K.R_END:
                return
            if seg_done:
                break
        if last:
            return


def _impedance(model: CellModel, step: Impedance, step_time: float, span: float) -> Iterator[Chunk]:
    """One row per frequency, or the sampled waveform (`step.acquisition`); the cell is held at the bias
    (or rests) while each point is measured, and the impedance is that of the linearised model at the
    state of that moment. A step resumed inside a frequency's waveform (after a crash or a pause)
    continues that waveform, its phase counted in step time from the point's start, with the first
    sample not yet taken."""
    freqs = step.frequencies()
    durations = np.array([eis_point_duration(f, step) for f in freqs])
    done = np.cumsum(durations)
    wave = step.acquisition == "waveform"
    # a waveform point's last sample is one interval before its end: taken, the point is done
    last_sample = done - (1.0 / (np.array(freqs) * step.samples_per_period) if wave else 0.0)
    k0 = int(np.searchsorted(last_sample, step_time + 1e-9))
    if step.bias is None:
        mode, target = 0, 0.0
    elif step.mode == "potentiostatic":
        mode, target = 1, float(step.bias)
    else:
        mode, target = 0, float(step.bias)
    ss = model.new_step(step_time, 0.0, record_first=False)
    names = ("test_time_second", "voltage_volt", "current_ampere", "step_time_second", "temperature_t1_celsius",
             "frequency_hertz") + (() if wave else ("real_impedance_ohm", "imaginary_impedance_ohm"))
    parts: list[np.ndarray] = []
    t_chunk = model.time
    for k in range(k0, len(freqs)):
        # step time into the point (< 0: it begins after the last sample taken, one interval on)
        into = step_time - (done[k - 1] if k else 0.0) if k == k0 else 0.0
        t_from, v_from, i_from = model.time, float(model.st[K.V_LAST]), model.current
        t_origin = t_from - into  # test time at which the point (the phase of its sine) began
        model.run(ss, mode, target, t_origin + durations[k], max_samples=2)
        z = complex(model.impedance([freqs[k]])[0])
        v = float(model.st[K.V_LAST])
        if wave:
            parts.append(_sine_response(step, freqs[k], z, t_origin, into, t_from, model.time, (v_from, v),
                                        (i_from, model.current), ss[K.S_T0], model.temperature - KELVIN))
        else:
            parts.append(np.array([[model.time, v, model.current, model.time - ss[K.S_T0],
                                    model.temperature - KELVIN, freqs[k], z.real, z.imag]]))
        last = k == len(freqs) - 1
        if last or model.time - t_chunk >= span:
            arr = np.concatenate(parts)
            yield Chunk({n: arr[:, i].copy() for i, n in enumerate(names)}, None, None, last)
            parts = []
            t_chunk = model.time
    if k0 >= len(freqs):
        yield Chunk({n: np.empty(0) for n in ("test_time_second", "voltage_volt", "current_ampere")}, None, None, True)


def _sine_response(step: Impedance, f: float, z: complex, t_origin: float, into: float, t_from: float, t_b: float,
                   v_dc: tuple[float, float], i_dc: tuple[float, float], t0: float, temp: float) -> np.ndarray:
    """The samples of one frequency of a waveform acquisition (rows: time, V, I, step time, °C, f): the
    steady-state response of the linearised cell, Z, to a sine of rms `step.amplitude` that began at
    t_origin, sampled every 1/(f·samples_per_period) from the first sample after `into` seconds of the
    point (0: from its start) to t_b, on the DC level moving linearly from its value at t_from to that
    at t_b (a cell still relaxing)."""
    spp = step.samples_per_period
    m = (1 + step.periods) * spp
    j0 = 0 if into <= 0.0 else int(math.floor(into * f * spp + 1e-6)) + 1  # the first sample not yet taken
    tau = np.arange(j0, m) / (f * spp)
    t = t_origin + tau
    frac = (t - t_from) / (t_b - t_from) if t_b > t_from else np.zeros(tau.size)
    phase = 2.0 * math.pi * f * tau
    v = v_dc[0] + (v_dc[1] - v_dc[0]) * frac
    i = i_dc[0] + (i_dc[1] - i_dc[0]) * frac
    peak = math.sqrt(2.0) * step.amplitude
    if step.mode == "galvanostatic":
        i = i + peak * np.sin(phase)
        v = v + peak * abs(z) * np.sin(phase + cmath.phase(z))
    else:
        v = v + peak * np.sin(phase)
        i = i + peak / abs(z) * np.sin(phase - cmath.phase(z))
    return np.column_stack([t, v, i, t - t0, np.full(tau.size, temp), np.full(tau.size, f)])
