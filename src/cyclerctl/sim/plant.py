"""A synchronous "physical cell" for simulated instruments on real transports.

The simulated SMU/potentiostat/chamber servers own their own time; they call the plant with the
setpoint they apply and how long it was applied. The plant is the same model as SimChannel (one
physics), without the step machinery: advance under a current, a voltage or open circuit, read the
terminal voltage, measure the impedance, change the ambient temperature.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..program import Cell
from . import kernel as K
from .model import CellModel
from .preset import Preset


class Plant:
    """A simulated coin cell: SI in and out (A, V, s, K, Hz, ohm). Positive current = charge."""

    def __init__(self, preset: Preset | str = "hard_carbon", cell: Cell | None = None,
                 temperature: float = 298.15, seed: int = 0, noise: bool = False) -> None:
        self.model = CellModel(preset, cell, temperature)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self._mode = -1
        self._target = math.nan
        self._ss: np.ndarray | None = None

    @property
    def preset(self) -> Preset:
        return self.model.preset

    @property
    def cell(self) -> Cell:
        return self.model.cell

    def _advance(self, mode: int, target: float, dt: float) -> None:
        if not dt >= 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be a finite time >= 0, got {dt!r}")
        if mode != self._mode or target != self._target or self._ss is None:
            self._ss = self.model.new_step(record_first=False)  # a setpoint change: resolve its transient
            self._mode, self._target = mode, target
        if dt > 0:
            self.model.run(self._ss, mode, target, self.model.time + dt, max_samples=2)

    def _noisy_v(self, v: float) -> float:
        if not self.noise:
            return v
        p = self.preset
        v = v + self.rng.normal(0.0, p.noise_voltage)
        return round(v / p.voltage_resolution) * p.voltage_resolution if p.voltage_resolution > 0 else v

    def _noisy_i(self, i: float) -> float:
        if not self.noise:
            return i
        p = self.preset
        i = i + self.rng.normal(0.0, p.noise_current + p.noise_current_relative * abs(i))
        return round(i / p.current_resolution) * p.current_resolution if p.current_resolution > 0 else i

    def advance_current(self, current: float, dt: float) -> float:
        """Hold `current` (A) for dt (s); the terminal voltage (V) at the end."""
        self._advance(0, float(current), dt)
        return self._noisy_v(float(self.model.solve_now(current)[0]) if dt == 0 else float(self.model.st[K.V_LAST]))

    def advance_voltage(self, voltage: float, dt: float) -> float:
        """Hold `voltage` (V) for dt (s); the current (A) at the end."""
        if dt == 0:
            m = self.model
            _v, i, _phi = K._eval(m.a, m.st, m.mst, m.mp, m.mu, m.vs, m.utab, m.stab, m.dtab, m.cp, 0.0, 1,
                                  float(voltage), math.inf, m.ex, m.fx, m.cache, m.w)
            return self._noisy_i(float(i))
        self._advance(1, float(voltage), dt)
        return self._noisy_i(float(self.model.st[K.I_LAST]))

    def advance_open(self, dt: float) -> float:
        """Open circuit (output off) for dt (s); the open-circuit voltage (V) at the end."""
        self._advance(0, 0.0, dt)
        return self._noisy_v(float(self.model.st[K.V_LAST]) if dt > 0 else float(self.model.solve_now(0.0)[0]))

    @property
    def voltage(self) -> float:
        """Terminal voltage (V) at the present state and current."""
        return self._noisy_v(float(self.model.solve_now()[0]))

    @property
    def current(self) -> float:
        """The current (A) flowing now."""
        return self._noisy_i(self.model.current)

    @property
    def time(self) -> float:
        """Seconds of simulated time the plant has lived."""
        return self.model.time

    def impedance(self, frequencies) -> np.ndarray:
        """Small-signal impedance (complex ohm, Z'' < 0 capacitive) at the present state."""
        z = self.model.impedance(np.asarray(frequencies, dtype=float))
        if self.noise:
            rel = self.preset.noise_impedance_relative
            z = z * (1.0 + rel * (self.rng.normal(size=z.shape) + 1j * self.rng.normal(size=z.shape)))
        return z

    def set_ambient(self, kelvin: float) -> None:
        """The air around the cell is now at `kelvin`; the cell follows with its thermal time constant."""
        if not (150.0 < kelvin < 500.0):
            raise ValueError(f"ambient temperature {kelvin!r} K is out of range")
        self.model.set_chamber(float(kelvin), immediate=True)

    @property
    def temperature(self) -> float:
        """Cell temperature (K)."""
        return self.model.temperature

    def truth(self) -> dict[str, float]:
        """Ground truth at the present state (no noise): stoichiometries, D, OCV, overpotentials, SEI."""
        n = self.model.n_columns
        out = np.empty((1, n))
        v, i, phi = self.model.solve_now()
        K._write(out, 0, self.model.a, self.model.st, self.model.mst, self.model.mp, self.model.cp,
                 self.model.w, v, i, phi, 0.0)
        return {k: float(x[0]) for k, x in self.model.truth(out).items()}

    def save_state(self) -> bytes:
        extra = {"rng": self.rng.bit_generator.state, "mode": self._mode, "target": self._target,
                 "ss": None if self._ss is None else self._ss.tolist(), "noise": self.noise}
        return self.model.save_state(json.loads(json.dumps(extra)))

    def load_state(self, data: bytes) -> None:
        extra = self.model.load_state(data)
        if "rng" in extra:
            self.rng.bit_generator.state = extra["rng"]
        self._mode = int(extra.get("mode", -1))
        self._target = float(extra.get("target", math.nan))
        ss = extra.get("ss")
        self._ss = None if ss is None else np.array(ss, dtype=float)
