"""The half-cell model: a preset and a cell turned into arrays, the state, and the operations on it.

State (all SI): per material the modal coefficients of the particle concentration, the hysteresis
variable, the active fraction left after fade and the sodiation throughput; for the cell the double
layer potential, SEI and trapped charge, temperatures, time, cycle count. Every operation that the
channel, the plant and the estimator need goes through `CellModel.run` (compiled kernel) or
`CellModel.impedance` (the linearised model, evaluated from the same modes).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..program import Cell, End
from . import kernel as K
from .ocv import FARADAY, GAS_CONSTANT, table
from .particle import modes
from .preset import Preset, load_preset

END_CODES = {
    "step_time": K.Q_STEP_TIME, "voltage": K.Q_VOLTAGE, "current": K.Q_CURRENT,
    "abs_current": K.Q_ABS_CURRENT, "abs_step_charge": K.Q_ABS_CHARGE, "abs_dv_dt": K.Q_DVDT,
    "temperature": K.Q_TEMPERATURE,
}

_STATE_VERSION = 3  # 2: the same arrays in an .npz (still read)
_STATE_MAGIC = b"cyclerctl-sim-state\n"


_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # OCV and dU/dx tables per material set


@dataclass
class RunResult:
    """Samples of one kernel call: `out` rows (see kernel column layout), which end fired, why it stopped."""

    out: np.ndarray
    end: int | None
    reason: int


def resolve_cell(preset: Preset, cell: Cell | None) -> Cell:
    """The cell to simulate: the preset's default, with any value the given cell sets."""
    base = preset.default_cell
    if cell is None:
        return base
    return Cell(
        name=cell.name if cell.name != "cell" else base.name,
        active_mass=cell.active_mass if cell.active_mass is not None else base.active_mass,
        area=cell.area if cell.area is not None else base.area,
        nominal_specific_capacity=(cell.nominal_specific_capacity if cell.nominal_specific_capacity
                                   is not None else base.nominal_specific_capacity),
        material=cell.material or base.material,
        counter_electrode=cell.counter_electrode,
        kind=cell.kind,
    )


class CellModel:
    """A simulated half cell: parameters as arrays, the state, the compiled stepper."""

    def __init__(self, preset: Preset | str = "hard_carbon", cell: Cell | None = None,
                 temperature: float = 298.15) -> None:
        self.preset = preset if isinstance(preset, Preset) else load_preset(preset)
        p = self.preset
        self.cell = resolve_cell(p, cell)
        mass, area = self.cell.active_mass, self.cell.area
        if not (mass and mass > 0 and area and area > 0):
            raise ConfigError("the simulated cell needs a positive active_mass and area")
        if not (150.0 < temperature < 500.0):
            raise ConfigError(f"simulator temperature {temperature:g} K is out of range (150-500 K)")
        self.materials = p.materials
        nm = len(p.materials)
        md = modes(p.shells, p.shell_ratio)
        self.modes = md
        n = len(md.mu)
        g = K.N_MP
        mp = np.zeros((nm, g))
        mu = np.zeros((nm, n))
        vs = np.zeros((nm, n))
        grid = None
        utab, stab = [], []
        # D(x) sampled every 0.001 of the mean stoichiometry; the kernel interpolates it linearly, so
        # it is the preset's piecewise-linear D(x) (exactly where the table's points lie on the grid)
        dtab = np.zeros((nm, 1001))
        x_grid = np.linspace(0.0, 1.0, 1001)
        area_total = 0.0
        for j, m in enumerate(p.materials):
            mj = mass * m.mass_fraction
            a_s = 3.0 * mj / (m.density * m.particle_radius)
            area_total += a_s
            mp[j, K.Q0] = m.theoretical_capacity * mj
            mp[j, K.RAD] = m.particle_radius
            mp[j, K.GAP] = md.gap * m.particle_radius
            mp[j, K.AS] = a_s
            mp[j, K.I0] = m.exchange_current_density
            mp[j, K.EA_CT] = m.charge_transfer_activation_energy
            mp[j, K.EA_D] = m.diffusion_activation_energy
            mp[j, K.HRATE] = m.hysteresis_rate
            mp[j, K.FADE_LIN] = m.fade_linear
            comps = list(m.fade_components)[:3] + [(0.0, 1.0)] * (3 - len(m.fade_components[:3]))
            for (fr, nc), (kf, kn) in zip(comps, [(K.F1, K.N1), (K.F2, K.N2), (K.F3, K.N3)], strict=True):
                mp[j, kf] = fr
                mp[j, kn] = max(nc, 1e-9)
            mp[j, K.HAS_HYST] = 1.0 if m.sites_desodiation else 0.0
            mu[j] = md.mu / m.particle_radius**2
            vs[j] = md.surface
            u0, s0 = table(m.sites, p.reference_temperature)
            u1, s1 = table(m.sites_desodiation, p.reference_temperature) if m.sites_desodiation else (u0, s0)
            utab.append(np.stack([u0, u1]))
            stab.append(np.stack([s0, s1]))
            dtab[j] = [m.diffusivity_at(x) for x in x_grid] if m.diffusivity_x else m.diffusivity
            grid = u0.size
        self.mp, self.mu, self.vs, self.dtab = mp, mu, vs, dtab
        # the tables are read-only: models of the same materials share one copy (a rack of 1,000
        # channels would otherwise hold and sweep through 128 MB of identical tables)
        key = (tuple((m.sites, m.sites_desodiation) for m in p.materials), p.reference_temperature)
        shared = _TABLES.get(key)
        if shared is None:
            shared = _TABLES[key] = (np.ascontiguousarray(np.stack(utab)), np.ascontiguousarray(np.stack(stab)))
        self.utab, self.stab = shared
        self.grid = grid
        self.active_area = area_total
        cp = np.zeros(K.N_CP)
        cp[K.RS] = p.series_resistance
        cp[K.EA_RS] = p.series_resistance_activation_energy
        cp[K.CDL] = p.double_layer_capacitance * area_total
        cp[K.I0NA] = p.counter_exchange_current_density * area
        cp[K.EA_NA] = p.counter_activation_energy
        cp[K.SEI_MAX] = p.sei_capacity * mass
        cp[K.SEI_RATE] = p.sei_rate
        cp[K.SEI_SLOW] = p.sei_slow_fraction
        cp[K.TREF] = p.reference_temperature
        cp[K.TAU_TH] = p.thermal_time_constant
        cp[K.RAMP] = p.chamber_ramp_rate
        cp[K.SHORT_AFTER] = float(p.soft_short_after_cycles or 0)
        cp[K.R_SHORT] = p.soft_short_resistance
        cp[K.DX_MAX] = 0.05
        cp[K.DV_MAX] = 1e-3
        cp[K.H_MAX] = 60.0
        self.cp = cp
        self.counter_area = area
        # state
        self.a = np.zeros((nm, n))
        self.st = np.zeros(K.N_ST)
        self.mst = np.zeros((nm, K.N_MST))
        for j, m in enumerate(p.materials):
            self.a[j, 0] = m.initial_stoichiometry
            self.mst[j, K.PSI] = 1.0
            self.mst[j, K.FADEF] = 1.0
            self.mst[j, K.HYST] = 1.0
        self.st[K.T_CELL] = self.st[K.T_CH] = self.st[K.T_SET] = temperature
        self._scratch()
        # start at rest, phi at the open-circuit potential of the first material (desodiated branch)
        x0 = p.materials[0].initial_stoichiometry
        self.st[K.PHI] = float(np.interp(x0, np.linspace(0.0, 1.0, grid), self.utab[0, 1]))
        self.st[K.V_LAST] = self.solve_now(0.0)[0]

    # ---- plumbing -----------------------------------------------------------------------------

    def _scratch(self) -> None:
        nm, n = self.a.shape
        self.ex = np.zeros((nm, n))
        self.fx = np.zeros((nm, n))
        self.cache = np.full((nm, 10), np.nan)  # decay factors and Arrhenius factors, keyed on D, h, T
        self._out: np.ndarray | None = None  # kernel output buffer, reused
        self._ends: dict[tuple[End, ...], tuple[np.ndarray, ...]] = {}
        self._last_ends: tuple[End, ...] | None = None
        self._last_arrs: tuple[np.ndarray, ...] = ()
        self.w = np.zeros((12, max(nm, 2)))  # solver workspace

    @property
    def n_columns(self) -> int:
        return K.N_BASE_OUT + K.N_TR_CELL + K.N_TR_MAT * len(self.materials)

    @property
    def time(self) -> float:
        return float(self.st[K.TIME])

    @time.setter
    def time(self, t: float) -> None:
        self.st[K.TIME] = float(t)

    @property
    def temperature(self) -> float:
        """Cell temperature (K)."""
        return float(self.st[K.T_CELL])

    @property
    def current(self) -> float:
        return float(self.st[K.I_LAST])

    @property
    def cycles(self) -> int:
        return int(self.st[K.CYCLES])

    def set_chamber(self, kelvin: float, immediate: bool = False) -> None:
        """Chamber set point (K); `immediate` puts the chamber air there at once (the cell still lags)."""
        self.st[K.T_SET] = kelvin
        if immediate:
            self.st[K.T_CH] = kelvin

    def inventory(self) -> float:
        """Na held by the working electrode (C), including SEI and trapped Na."""
        return float(K.inventory(self.a, self.st, self.mst, self.mp))

    def solve_now(self, current: float | None = None) -> tuple[float, float, float]:
        """Instantaneous terminal voltage, current and phi at the present state (nothing advances)."""
        i = self.current if current is None else current
        return K._eval(self.a, self.st, self.mst, self.mp, self.mu, self.vs, self.utab, self.stab,
                       self.dtab, self.cp, 0.0, 0, float(i), math.inf, self.ex, self.fx, self.cache, self.w)

    def new_step(self, step_time: float = 0.0, step_charge: float = 0.0, record_first: bool = True,
                 temperature_step: tuple[float, float] | None = None) -> np.ndarray:
        """Step bookkeeping for `run`: step time origin, charge so far, the record anchors."""
        ss = np.zeros(K.N_SS)
        ss[K.S_T0] = self.time - step_time
        ss[K.S_CHARGE] = step_charge
        ss[K.S_FIRST] = 1.0 if record_first else 0.0
        ss[K.S_HSUB] = 1e-3
        ss[K.S_REC_T] = self.time
        ss[K.S_REC_V] = self.st[K.V_LAST]
        ss[K.S_REC_I] = self.st[K.I_LAST]
        ss[K.S_ANC_T] = self.time
        ss[K.S_ANC_V] = self.st[K.V_LAST]
        ss[K.S_SEG_T0] = self.time
        ss[K.S_STABLE] = -1.0
        if temperature_step is not None:
            ss[K.S_TEMP_MODE] = 1.0
            ss[K.S_TEMP_TOL], ss[K.S_TEMP_FOR] = temperature_step
        return ss

    def run(self, ss: np.ndarray, mode: int, target: float, t_stop: float, *, rate: float = 0.0,
            current_limit: float = math.inf, every: float | None = None, voltage_change: float | None = None,
            current_change: float | None = None, ends: tuple[End, ...] = (), max_samples: int = 200_000
            ) -> RunResult:
        """Advance under current (mode 0, target A) or voltage (mode 1, target V, or a sweep from
        ss's segment start at `rate` V/s) until an end fires, t_stop, or max_samples are recorded."""
        if rate:
            ss[K.S_SEG_V0] = target  # a sweep starts its segment at `target` at ss's segment time
        step = self.stepper(ss, mode, target, rate=rate, current_limit=current_limit, every=every,
                            voltage_change=voltage_change, current_change=current_change, ends=ends,
                            max_samples=max_samples)
        return RunResult(*step(t_stop))

    def stepper(self, ss: np.ndarray, mode: int, target: float, *, rate: float = 0.0,
                current_limit: float = math.inf, every: float | None = None, voltage_change: float | None = None,
                current_change: float | None = None, ends: tuple[End, ...] = (), max_samples: int = 200_000
                ) -> Callable[[float], tuple[np.ndarray, int | None, int]]:
        """`run` with everything but t_stop bound once: the blocks of one current, voltage or rest
        step differ only in where they stop. Returns step(t_stop) -> (out rows, end index or None,
        reason)."""
        e_code, e_op, e_val, e_win = self._end_arrays(ends)
        rows = max(2, max_samples)
        if self._out is None or self._out.shape[0] < rows:
            self._out = np.empty((rows, self.n_columns))
        out = self._out[:rows]
        args = [self.a, self.st, self.mst, self.mp, self.mu, self.vs, self.utab, self.stab, self.dtab, self.cp,
                ss, int(mode), float(target), float(rate), float(current_limit), 0.0, float(every or 0.0),
                float(voltage_change or 0.0), float(current_change or 0.0), e_code, e_op, e_val, e_win, out,
                self.ex, self.fx, self.cache, self.w]
        kernel = K.run

        def step(t_stop: float) -> tuple[np.ndarray, int | None, int]:
            args[15] = float(t_stop)
            n, end, reason = kernel(*args)
            return out[:n].copy(), (None if end < 0 else int(end)), int(reason)

        return step

    def _end_arrays(self, ends: tuple[End, ...]) -> tuple[np.ndarray, ...]:
        """The ends as the kernel's arrays (code, op, value, window), kept for the ends seen last."""
        if ends is self._last_ends:  # the same step asking again (every block of it)
            return self._last_arrs
        arrs = self._ends.get(ends)
        if arrs is None:
            arrs = (np.array([END_CODES[e.quantity] for e in ends], dtype=np.int64),
                    np.array([1 if e.op == ">=" else -1 for e in ends], dtype=np.int64),
                    np.array([e.value for e in ends], dtype=np.float64),
                    np.array([e.window for e in ends], dtype=np.float64))
            if len(self._ends) >= 64:
                self._ends.clear()
            self._ends[ends] = arrs
        self._last_ends, self._last_arrs = ends, arrs
        return arrs

    def advance(self, mode: int, target: float, dt: float, ss: np.ndarray | None = None) -> np.ndarray:
        """Advance dt seconds without recording (plant use). Returns the step state for continuing."""
        if ss is None:
            ss = self.new_step(record_first=False)
        if dt > 0:
            self.run(ss, mode, target, self.time + dt, max_samples=2)
        return ss

    # ---- impedance ----------------------------------------------------------------------------

    def impedance(self, frequencies) -> np.ndarray:
        """Small-signal impedance Z(f) (ohm, Z'' < 0 capacitive) of the model linearised at the present
        state: Z = R_s + [j w C_dl + sum_j 1/(R_ct,j + Z_d,j)]^-1 + (R_ct,Na || C_dl,Na), with
        Z_d,j the modal sum of the same particle modes the time stepper uses."""
        w = 2.0 * np.pi * np.asarray(frequencies, dtype=float)
        p = self.parts()
        y = 1j * w * p["double_layer_capacitance"]
        for d in p["materials"]:
            y = y + 1.0 / (d["charge_transfer_resistance"] + self.diffusion_impedance(d["index"], w))
        z_ce = 1.0 / (1.0 / p["counter_charge_transfer_resistance"] + 1j * w * p["counter_double_layer_capacitance"])
        return p["series_resistance"] + 1.0 / y + z_ce

    def diffusion_impedance(self, j: int, omega: np.ndarray) -> np.ndarray:
        """Z_d of material j at angular frequencies omega (modal sum, present state)."""
        d = self.parts()["materials"][j]
        lam = d["diffusivity"] * self.mu[j]
        q = d["capacity"]
        vs2 = self.vs[j] ** 2
        g = -(vs2[None, :] / (1j * omega[:, None] - lam[None, :])).sum(1) / q
        g = g - self.mp[j, K.GAP] * self.mp[j, K.RAD] / (3.0 * q * d["diffusivity"])
        return d["ocv_slope"] * g

    def parts(self) -> dict:
        """The linearised elements at the present state (SI): R_s, C_dl, per material R_ct, D, Q, dU/dx."""
        t = self.temperature
        tref = self.cp[K.TREF]
        f = FARADAY / (GAS_CONSTANT * t)

        def arr(ea: float) -> float:
            return math.exp(-ea / GAS_CONSTANT * (1.0 / t - 1.0 / tref))

        _v, _i, _phi = self.solve_now()
        mats = []
        for j in range(len(self.materials)):
            i0a = self.mp[j, K.I0] * self.mp[j, K.AS] * self.mst[j, K.PSI] * arr(self.mp[j, K.EA_CT])
            ij = self.mst[j, K.IJ]
            z = ij / (2 * i0a)
            dd = float(K.diffusivity(self.dtab, j, self.a[j, 0])) * arr(self.mp[j, K.EA_D])
            mats.append({
                "index": j, "name": self.materials[j].name,
                "charge_transfer_resistance": 1.0 / (f * i0a * math.sqrt(1 + z * z)),
                "diffusivity": dd, "capacity": self.mp[j, K.Q0] * self.mst[j, K.PSI],
                "ocv_slope": float(self.w[6, j]), "surface_stoichiometry": float(self.w[1, j]),
                "particle_radius": self.mp[j, K.RAD],
            })
        i0na = self.cp[K.I0NA] * arr(self.cp[K.EA_NA])
        return {
            "series_resistance": self.cp[K.RS] * math.exp(self.cp[K.EA_RS] / GAS_CONSTANT * (1 / t - 1 / tref)),
            "double_layer_capacitance": self.cp[K.CDL],
            "counter_charge_transfer_resistance": 1.0 / (f * i0na),
            "counter_double_layer_capacitance": self.preset.counter_double_layer_capacitance * self.counter_area,
            "materials": mats,
        }

    # ---- truth ----------------------------------------------------------------------------------

    def truth(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """Ground truth per sample, from the kernel's output rows. Cell-level names describe the
        first (primary) material; every material also has its own `..._<name>` columns."""
        b = K.N_BASE_OUT
        tr = {
            "electrode_potential": out[:, b + K.TR_PHI],
            "counter_electrode_overpotential": out[:, b + K.TR_ETA_NA],
            "ohmic_drop": out[:, b + K.TR_OHMIC],
            "sei_charge": out[:, b + K.TR_SEI],
            "trapped_charge": out[:, b + K.TR_TRAP],
            "short_charge": out[:, b + K.TR_SHORT],
            "stored_charge": out[:, b + K.TR_INVENTORY],
            "double_layer_charge": out[:, b + K.TR_DL],
            "charge_passed": out[:, b + K.TR_PASSED],
            "temperature_kelvin": out[:, K.C_TEMP],
        }
        names = ("mean_stoichiometry", "surface_stoichiometry", "diffusion_coefficient",
                 "open_circuit_voltage", "charge_transfer_overpotential", "ocv_slope", "faradaic_current")
        for j, m in enumerate(self.materials):
            c = b + K.N_TR_CELL + K.N_TR_MAT * j
            tag = m.name.replace(" ", "_").lower()
            for k, nm in enumerate(names):
                col = out[:, c + k]
                if j == 0:
                    tr[nm] = col
                if len(self.materials) > 1:
                    tr[f"{nm}_{tag}"] = col
        return tr

    # ---- state ---------------------------------------------------------------------------------

    def save_state(self, extra: dict | None = None) -> bytes:
        """Full model state (bit-exact) plus an optional JSON-able `extra` (e.g. RNG state): a short
        JSON header and the raw float64 arrays (cheap enough to journal with every commit)."""
        meta = json.dumps({"version": _STATE_VERSION, "preset": self.preset.name, "extra": extra or {}}).encode()
        return b"".join((_STATE_MAGIC, len(meta).to_bytes(4, "little"), meta, self.a.tobytes(), self.st.tobytes(),
                         self.mst.tobytes()))

    def load_state(self, data: bytes) -> dict:
        """Restore save_state() (or the earlier .npz form); returns its `extra`."""
        try:
            if data[:len(_STATE_MAGIC)] == _STATE_MAGIC:
                k = len(_STATE_MAGIC)
                size = int.from_bytes(data[k:k + 4], "little")
                meta = json.loads(data[k + 4:k + 4 + size].decode())
                raw = np.frombuffer(data, dtype=np.float64, offset=k + 4 + size)
                na, nst = self.a.size, self.st.size
                if raw.size != na + nst + self.mst.size:
                    raise ConfigError(f"simulator state does not fit preset {self.preset.name!r} (saved for "
                                      f"{meta.get('preset')!r})")
                a = raw[:na].reshape(self.a.shape)
                st = raw[na:na + nst]
                mst = raw[na + nst:].reshape(self.mst.shape)
            else:
                z = np.load(io.BytesIO(data), allow_pickle=False)
                meta = json.loads(bytes(z["meta"]).decode())
                a, st, mst = z["a"], z["st"], z["mst"]
                if meta.get("version") == 2:
                    meta["version"] = _STATE_VERSION
        except ConfigError:
            raise
        except Exception as exc:  # corrupt bytes
            raise ConfigError(f"simulator state cannot be read: {exc}") from None
        if meta.get("version") != _STATE_VERSION or a.shape != self.a.shape or mst.shape != self.mst.shape:
            raise ConfigError(f"simulator state does not fit preset {self.preset.name!r} (saved for "
                              f"{meta.get('preset')!r})")
        self.a[...] = a
        self.st[...] = st
        self.mst[...] = mst
        self._scratch()
        return meta.get("extra", {})
