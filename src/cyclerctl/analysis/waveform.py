"""Impedance from the sampled waveform: one point per excitation frequency, streaming.

A channel without a frequency-response analyser (an SMU, a cycler channel, a DAQ beside the cell)
can still measure impedance: it applies a sine at frequency f, records voltage and current as
ordinary samples (each carrying its excitation frequency in `frequency_hertz`) and leaves the
demodulation to us. Per frequency, over the samples after the first `settle_periods` periods:

  x(t) = a + b·u + c₁ cos θ + d₁ sin θ + c₂ cos 2θ + d₂ sin 2θ,   θ = 2πu,  u = (t − t₀)·f

(u in periods since the segment's first sample t₀) is fitted by linear least squares to the voltage
and to the current: a lock-in at f with a linear drift term (a cell still relaxing after the
previous step moves the DC level, which a plain DFT would fold into the fundamental) and the second
harmonic. The phasors are X̂ = c₁ − j d₁, and Z = V̂/Î (Ω, Z'' < 0 capacitive; the sign is that of the
channel's current convention). Over whole periods of uniform samples this is the DFT at f with the
trend removed; it holds for any sampling times.

- `harmonic`: |2nd harmonic|/|fundamental| of the response (the channel with the larger ratio; the
  excitation is clean): a response that is not linear in the amplitude (too large an amplitude for
  the cell) makes it large. Over whole periods the harmonic does not bias the fundamental; it is
  reported, and the spectrum flagged above EisSettings.harmonic_limit.
- `residual`: the larger of the two channels' rms misfit over their rms fundamental amplitude
  (noise, higher harmonics, a drift that is not linear), and `relative_error` = residual·√(2/n),
  the standard error of |Z|/|Z| that noise of that size leaves.

Only running sums are kept — the Gram matrix of the six basis functions and their products with
V − V₀ and I − I₀ (V₀, I₀ the segment's first sample, so the DC level does not cancel digits) — so a
point costs the same however its samples are split into blocks, and the sums, hence the point, are
bit-identical for any split. A point closes when the frequency changes or the step ends. A break in
the samples of one frequency (time going back, or a gap of more than 2.5 mean sampling intervals:
a pause) closes the piece before it; each piece leaves out its own settling period, and the pieces
of one frequency are merged into one point weighted by their samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numba import njit

from .base import column

NB = 6  # basis: 1, u, cos θ, sin θ, cos 2θ, sin 2θ
N_GRAM = NB * (NB + 1) // 2
N_SUMS = N_GRAM + 2 * NB + 2  # Gram upper triangle, V'·φ, I'·φ, ΣV'², ΣI'²
_GV, _GI, _VV, _II = N_GRAM, N_GRAM + NB, N_GRAM + 2 * NB, N_GRAM + 2 * NB + 1
# state slots: frequency, t₀, V₀, I₀, samples seen, samples used, Σ temperature, temperature count,
# last time, Σ V (absolute, for the mean potential)
N_STATE = 10
GAP_FACTOR = 2.5  # a time step above this many times the piece's mean interval starts a new piece
_F, _T0, _V0, _I0, _SEEN, _USED, _TSUM, _TN, _TLAST, _VSUM = range(N_STATE)


@njit(cache=True, nogil=True)
def _accumulate(t, v, i, f, temp, settle, state, sums, out_state, out_sums):  # pragma: no cover - compiled
    """Feed one block: samples with a finite frequency > 0 and finite t, V, I. A change of frequency
    closes the open point (its state and sums copied to row `closed` of out_state / out_sums) and
    opens the next. Returns the number of points closed."""
    closed = 0
    two_pi = 2.0 * math.pi
    phi = np.empty(NB)
    for k in range(t.shape[0]):
        fk = f[k]
        if not (fk > 0.0 and math.isfinite(fk) and math.isfinite(t[k]) and math.isfinite(v[k])
                and math.isfinite(i[k])):
            continue
        seen = state[_SEEN]
        gap = t[k] - state[_TLAST]
        # a new piece: another frequency, or the same one after a break in the samples (time going
        # back, or a gap of more than GAP_FACTOR sampling intervals: a pause), whose phase the fit
        # cannot carry over
        if state[_F] != fk or (seen > 0 and (gap < 0.0 or (
                seen >= 2 and gap > GAP_FACTOR * (state[_TLAST] - state[_T0]) / (seen - 1.0)))):
            if seen > 0:
                out_state[closed, :] = state
                out_sums[closed, :] = sums
                closed += 1
            state[:] = 0.0
            sums[:] = 0.0
            state[_F] = fk
            state[_T0] = t[k]
            state[_V0] = v[k]
            state[_I0] = i[k]
        state[_SEEN] += 1
        state[_TLAST] = t[k]
        if math.isfinite(temp[k]):
            state[_TSUM] += temp[k]
            state[_TN] += 1
        u = (t[k] - state[_T0]) * fk
        if u < settle - 1e-9:  # (a sample on the settling boundary counts)
            continue
        state[_USED] += 1
        state[_VSUM] += v[k]
        c = math.cos(two_pi * u)
        s = math.sin(two_pi * u)
        phi[0] = 1.0
        phi[1] = u
        phi[2] = c
        phi[3] = s
        phi[4] = c * c - s * s
        phi[5] = 2.0 * c * s
        dv = v[k] - state[_V0]
        di = i[k] - state[_I0]
        m = 0
        for a in range(NB):
            pa = phi[a]
            for b in range(a, NB):
                sums[m] += pa * phi[b]
                m += 1
            sums[_GV + a] += dv * pa
            sums[_GI + a] += di * pa
        sums[_VV] += dv * dv
        sums[_II] += di * di
    return closed


@dataclass(frozen=True)
class WaveformPoint:
    """One demodulated frequency: Z (Ω), the samples it used, the response's second harmonic and
    misfit relative to its fundamental, the relative standard error of |Z|, the mean temperature
    (°C, NaN if none) and potential (V), and the time of its last sample (s)."""

    frequency_hertz: float
    impedance_ohm: complex
    samples: int
    harmonic: float
    residual: float
    relative_error: float
    temperature_celsius: float
    potential_volt: float
    test_time_second: float


def demodulate(states: np.ndarray, sums: np.ndarray, settle: float, min_samples: int = 12
               ) -> list[WaveformPoint | None]:
    """The impedance points of closed segments (rows of `states`, `sums`), each None when it has fewer
    than `min_samples` samples after settling or they do not cover one whole period. One batched
    solve for all of them."""
    k = states.shape[0]
    if k == 0:
        return []
    n = states[:, _USED]
    span = (states[:, _TLAST] - states[:, _T0]) * states[:, _F] - settle  # periods, first used sample to last
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (n >= min_samples) & (span + span / np.maximum(n - 1, 1) >= 1.0 - 1e-9)
    g = np.empty((k, NB, NB))
    iu = np.triu_indices(NB)
    g[:, iu[0], iu[1]] = sums[:, :N_GRAM]
    g[:, iu[1], iu[0]] = sums[:, :N_GRAM]
    g[~ok] = np.eye(NB)  # not solved: kept out of the batch's way
    rhs = np.stack([sums[:, _GV:_GV + NB], sums[:, _GI:_GI + NB]], axis=2)  # (k, NB, 2): V and I
    x = np.full((k, NB, 2), np.nan)
    try:
        x[:] = np.linalg.solve(g, rhs)
    except np.linalg.LinAlgError:  # a singular segment (e.g. every sample at one phase): one at a time
        for j in np.flatnonzero(ok):
            try:
                x[j] = np.linalg.solve(g[j], rhs[j])
            except np.linalg.LinAlgError:
                ok[j] = False
    first = x[:, 2, :] - 1j * x[:, 3, :]  # (k, 2): V̂, Î
    second = np.hypot(x[:, 4, :], x[:, 5, :])
    rss = np.maximum(sums[:, [_VV, _II]] - np.einsum("kij,kij->kj", x, rhs), 0.0)
    amp = np.abs(first)
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (second / amp).max(axis=1)
        residual = (np.sqrt(rss / np.maximum(n, 1)[:, None]) / (amp / math.sqrt(2.0))).max(axis=1)
        z = first[:, 0] / first[:, 1]
        temp = np.where(states[:, _TN] > 0, states[:, _TSUM] / np.maximum(states[:, _TN], 1), np.nan)
        potential = states[:, _VSUM] / n
    ok &= np.isfinite(z) & (first[:, 0] != 0)
    return [WaveformPoint(float(states[j, _F]), complex(z[j]), int(n[j]), float(harmonic[j]), float(residual[j]),
                          float(residual[j] * math.sqrt(2.0 / n[j])), float(temp[j]), float(potential[j]),
                          float(states[j, _TLAST])) if ok[j] else None for j in range(k)]


class WaveformImpedance:
    """Streaming demodulator of one impedance step: feed sample blocks (the running sums of the open
    frequency grow; a frequency change closes it), then `close()` at the step end gives every point."""

    def __init__(self, settle_periods: float = 1.0, min_samples: int = 12) -> None:
        self.settle = float(settle_periods)
        self.min_samples = min_samples
        self._state = np.zeros(N_STATE)
        self._sums = np.zeros(N_SUMS)
        self._closed: list[tuple[np.ndarray, np.ndarray]] = []
        self.dropped = 0  # segments too short to give a point

    def feed(self, rows: Mapping[str, np.ndarray]) -> int:
        """Accumulate a block; the number of frequencies it closed."""
        t = column(rows, "test_time_second")
        n = t.shape[0]
        if n == 0:
            return 0
        f = column(rows, "frequency_hertz")
        # every change of frequency inside the block may close a point
        changes = 1 + int(np.count_nonzero(f[1:] != f[:-1])) if n > 1 else 1
        out_state = np.empty((changes, N_STATE))
        out_sums = np.empty((changes, N_SUMS))
        closed = _accumulate(t, column(rows, "voltage_volt"), column(rows, "current_ampere"), f,
                             column(rows, "temperature_t1_celsius"), self.settle, self._state, self._sums,
                             out_state, out_sums)
        if closed:
            self._closed.append((out_state[:closed], out_sums[:closed]))
        return closed

    def close(self) -> list[WaveformPoint]:
        """Every point of the step, in sweep order (the open one closed); the demodulator is empty
        afterwards."""
        if self._state[_SEEN] > 0:
            self._closed.append((self._state[None, :].copy(), self._sums[None, :].copy()))
        self._state[:] = 0.0
        self._sums[:] = 0.0
        if not self._closed:
            return []
        states = np.concatenate([c[0] for c in self._closed])
        sums = np.concatenate([c[1] for c in self._closed])
        self._closed = []
        points = demodulate(states, sums, self.settle, self.min_samples)
        self.dropped += sum(p is None for p in points)
        return _merge([p for p in points if p is not None])


def _merge(points: list[WaveformPoint]) -> list[WaveformPoint]:
    """Consecutive pieces of one frequency (a waveform broken by a pause) as one point: Z, temperature
    and potential weighted by samples, the standard errors combined as those of that weighted mean,
    the largest harmonic and misfit, the last time."""
    out: list[WaveformPoint] = []
    group: list[WaveformPoint] = []
    for p in [*points, None]:
        if group and (p is None or p.frequency_hertz != group[0].frequency_hertz):
            if len(group) == 1:
                out.append(group[0])
            else:
                n = np.array([q.samples for q in group], dtype=float)
                w = n / n.sum()
                temps = np.array([q.temperature_celsius for q in group])
                out.append(WaveformPoint(
                    group[0].frequency_hertz, complex(np.dot(w, [q.impedance_ohm for q in group])), int(n.sum()),
                    max(q.harmonic for q in group), max(q.residual for q in group),
                    float(math.sqrt(np.dot(w * w, np.square([q.relative_error for q in group])))),
                    float(np.dot(w, temps)) if np.isfinite(temps).all() else math.nan,
                    float(np.dot(w, [q.potential_volt for q in group])), group[-1].test_time_second))
            group = []
        if p is not None:
            group.append(p)
    return out
