"""A minimal cell model with the method names of cyclerctl.sim.plant.Plant, for driver tests that must
not depend on the simulator's calibration: OCV(x) of a sloping hard-carbon-like anode, series resistance,
one RC pair, a Warburg tail in the impedance, Arrhenius charge transfer."""

from __future__ import annotations

import math

import numpy as np

R_GAS = 8.314462618


class StandInPlant:
    def __init__(self, capacity: float = 3.672, r0: float = 20.0, r1: float = 60.0, c1: float = 2e-3,
                 sigma: float = 30.0, x0: float = 0.02, temperature: float = 298.15,
                 activation_energy: float = 50e3) -> None:
        self.capacity = capacity  # C
        self.r0, self.r1_ref, self.c1, self.sigma = r0, r1, c1, sigma
        self.x = x0  # sodiation fraction: rises on discharge (negative current)
        self.v_rc = 0.0
        self.temperature = temperature
        self.ambient = temperature
        self.activation_energy = activation_energy

    @property
    def r1(self) -> float:
        return self.r1_ref * math.exp(self.activation_energy / R_GAS * (1 / self.temperature - 1 / 298.15))

    def ocv(self) -> float:
        x = min(max(self.x, 0.0), 1.2)
        return 0.02 + 0.1 * (1 - x) + 1.5 * math.exp(-7 * x) - 0.08 * x

    def _thermal(self, dt: float) -> None:
        self.temperature += (self.ambient - self.temperature) * (1 - math.exp(-dt / 60.0))

    def advance_current(self, current: float, dt: float) -> float:
        self._thermal(dt)
        tau = self.r1 * self.c1
        self.x -= current * dt / self.capacity
        self.v_rc += (current * self.r1 - self.v_rc) * (1 - math.exp(-dt / tau))
        return self.ocv() + current * self.r0 + self.v_rc

    def advance_voltage(self, voltage: float, dt: float) -> float:
        tau = self.r1 * self.c1
        a = 1 - math.exp(-dt / tau)
        v_rc_decayed = self.v_rc * (1 - a)
        current = (voltage - self.ocv() - v_rc_decayed) / (self.r0 + self.r1 * a)
        self.advance_current(current, dt)
        return current

    def advance_open(self, dt: float) -> float:
        return self.advance_current(0.0, dt)

    def impedance(self, freqs) -> np.ndarray:
        w = 2 * np.pi * np.asarray(freqs, dtype=float)
        return self.r0 + self.r1 / (1 + 1j * w * self.r1 * self.c1) + self.sigma * (1 - 1j) / np.sqrt(w)

    def set_ambient(self, kelvin: float) -> None:
        self.ambient = kelvin
