"""Cell presets: the ground-truth parameters of a simulated half cell, read from YAML (sim/*.yaml).

Every quantity in a preset file carries a unit and is converted to SI here, once. A preset names the
cell it was calibrated for (`cell:`), the active materials of the working electrode (each with its
own particles, diffusivity, open-circuit sites and kinetics), the Na-metal counter electrode, the
electrolyte/contact series resistance, the SEI and fade laws, the thermal model and the instrument
noise. Errors name the file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ProtocolError, UnitError
from ..paths import resolve_data_file
from ..program import Cell
from ..units import Context, parse, ureg

__all__ = ["Material", "Preset", "load_preset", "parse_preset"]


@dataclass(frozen=True)
class Material:
    """One active material of the working electrode (SI units).

    sites: MSMR sites (U0 [V], X [-], omega [-]) of the sodiation branch; sites_desodiation those of
    the desodiation branch (None: no hysteresis). diffusivity: chemical D at `reference_temperature`,
    either a constant or a table over the mean stoichiometry (diffusivity_x, diffusivity_values)."""

    name: str
    mass_fraction: float
    theoretical_capacity: float  # C/kg of this material (x = 0 -> 1)
    density: float  # kg/m^3
    particle_radius: float  # m
    diffusivity: float  # m^2/s
    diffusivity_x: tuple[float, ...] = ()
    diffusivity_values: tuple[float, ...] = ()
    diffusion_activation_energy: float = 0.0  # J/mol
    exchange_current_density: float = 1.0  # A/m^2 at x = 0.5
    charge_transfer_activation_energy: float = 0.0  # J/mol
    sites: tuple[tuple[float, float, float], ...] = ()
    sites_desodiation: tuple[tuple[float, float, float], ...] | None = None
    hysteresis_rate: float = 20.0  # 1/(fraction of capacity): branch switches after ~1/rate of it
    initial_stoichiometry: float = 0.005
    fade_linear: float = 0.0  # capacity fraction lost per equivalent full cycle
    fade_components: tuple[tuple[float, float], ...] = ()  # (fraction, e-folding in equivalent cycles)

    def diffusivity_at(self, x: float) -> float:
        """D at mean stoichiometry x (reference temperature)."""
        if not self.diffusivity_x:
            return self.diffusivity
        import numpy as np

        return float(np.interp(x, self.diffusivity_x, self.diffusivity_values))


@dataclass(frozen=True)
class Preset:
    """A simulated cell: default cell, materials, cell-level physics, thermal model and noise (SI)."""

    name: str
    default_cell: Cell
    materials: tuple[Material, ...]
    series_resistance: float = 5.0  # ohm
    series_resistance_activation_energy: float = 0.0  # J/mol
    double_layer_capacitance: float = 0.2  # F/m^2 of active surface
    counter_exchange_current_density: float = 10.0  # A/m^2 (Na metal)
    counter_activation_energy: float = 0.0  # J/mol
    counter_double_layer_capacitance: float = 0.1  # F/m^2 of geometric area
    sei_capacity: float = 0.0  # C/kg of active mass: first-cycle irreversible SEI charge (saturation)
    sei_rate: float = 0.5  # fraction of the sodiation current going to SEI on a fresh electrode
    sei_slow_fraction: float = 0.0  # fraction of the sodiation current lost to SEI growth thereafter
    reference_temperature: float = 298.15  # K
    thermal_time_constant: float = 300.0  # s, cell vs chamber air
    chamber_ramp_rate: float = 2.0 / 60.0  # K/s
    soft_short_after_cycles: int | None = None
    soft_short_resistance: float = 2000.0  # ohm
    noise_voltage: float = 100e-6  # V rms
    noise_current_relative: float = 1e-4  # of |I|
    noise_current: float = 1e-9  # A rms
    voltage_resolution: float = 10e-6  # V (ADC LSB)
    current_resolution: float = 1e-9  # A
    noise_temperature: float = 0.05  # K rms
    noise_impedance_relative: float = 1e-3
    shells: int = 48
    shell_ratio: float = 1.2
    window: tuple[float, float] = (0.0, 2.5)  # V, the calibration window
    description: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def with_materials(self, **changes: Any) -> Preset:
        """A copy with every material changed (e.g. diffusivity_x=() for a constant D)."""
        return replace(self, materials=tuple(replace(m, **changes) for m in self.materials))


# ---- YAML with line numbers -------------------------------------------------------------------


class _Map(dict):
    lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    m = _Map()
    m.lines = {}
    for k_node, v_node in node.value:
        key = loader.construct_object(k_node, deep=True)
        m[key] = loader.construct_object(v_node, deep=True)
        m.lines[str(key)] = k_node.start_mark.line + 1
    m.lines["__self__"] = node.start_mark.line + 1
    return m


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Reader:
    """Reads typed values from a mapping, raising ProtocolError(file, line) on bad input."""

    def __init__(self, file: str, data: _Map, where: str = "") -> None:
        self.file, self.data, self.where = file, data, where
        self.used: set[str] = set()

    def line(self, key: str | None = None) -> int | None:
        lines = getattr(self.data, "lines", {})
        return lines.get(key, lines.get("__self__")) if key else lines.get("__self__")

    def error(self, key: str | None, message: str) -> ProtocolError:
        name = f"{self.where}{key}" if key else self.where.rstrip(".") or "preset"
        return ProtocolError(f"{name}: {message}", self.file, self.line(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                import difflib

                near = difflib.get_close_matches(key, [str(k) for k in self.data], n=1, cutoff=0.8)
                if near:
                    raise self.error(near[0], f"unknown key (did you mean {key!r}?)")
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def q(self, key: str, kind: str, default: Any = ..., positive: bool = False,
          ctx: Context | None = None) -> float:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return default
        try:
            x = parse(v, kind, ctx)
        except UnitError as exc:
            raise self.error(key, str(exc)) from None
        if positive and not x > 0:
            raise self.error(key, f"must be > 0, got {v!r}")
        return x

    def si(self, key: str, unit: str, default: Any = ..., positive: bool = False) -> float:
        """A quantity of a dimension not among units.KINDS (e.g. F/m^2, A/m^2, g/cm^3)."""
        v = self.raw(key, default)
        if v is default and default is not ...:
            return default
        x = _pint(v, unit, lambda m: self.error(key, m))
        if positive and not x > 0:
            raise self.error(key, f"must be > 0, got {v!r}")
        return x

    def number(self, key: str, default: Any = ..., positive: bool = False) -> float:
        v = self.raw(key, default)
        if v is default and default is not ...:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"expected a plain number, got {v!r}")
        if positive and not v > 0:
            raise self.error(key, f"must be > 0, got {v!r}")
        return float(v)

    def sub(self, key: str, default: Any = ...) -> _Reader | None:
        v = self.raw(key, default)
        if v is None or (v is default and default is not ...):
            return None
        if not isinstance(v, dict):
            raise self.error(key, "expected a mapping")
        return _Reader(self.file, v, f"{self.where}{key}.")

    def check_unknown(self) -> None:
        for k in self.data:
            if k not in self.used:
                raise self.error(str(k), f"unknown key (known here: {', '.join(sorted(self.used))})")


def _pint(v: Any, unit: str, err) -> float:
    if isinstance(v, bool) or isinstance(v, (int, float)):
        raise err(f"expected a quantity in {unit} with a unit, got the bare number {v!r}")
    text = str(v).strip().replace("^", "**").replace("µ", "u").replace("μ", "u").replace("Ω", "ohm")
    try:
        q = ureg.Quantity(text)
        return float(q.to(unit).magnitude)
    except Exception as exc:  # pint raises many kinds
        raise err(f"cannot read {v!r} as a quantity in {unit}: {exc}") from None


def _sites(r: _Reader, key: str) -> tuple[tuple[float, float, float], ...]:
    raw = r.raw(key)
    if not isinstance(raw, list) or not raw:
        raise r.error(key, "expected a list of [U0 (V), X, omega] sites")
    out = []
    for i, s in enumerate(raw):
        if not isinstance(s, list) or len(s) != 3:
            raise r.error(key, f"site {i + 1}: expected [U0 (V), X, omega], got {s!r}")
        try:
            u0 = parse(s[0], "voltage")
        except UnitError as exc:
            raise r.error(key, f"site {i + 1}: {exc}") from None
        x, w = s[1], s[2]
        if not all(isinstance(z, (int, float)) and not isinstance(z, bool) and z > 0 for z in (x, w)):
            raise r.error(key, f"site {i + 1}: X and omega must be positive numbers, got {s!r}")
        out.append((u0, float(x), float(w)))
    return tuple(out)


def _material(file: str, data: Any, i: int, where: str) -> Material:
    if not isinstance(data, dict):
        raise ProtocolError(f"materials[{i}]: expected a mapping", file)
    r = _Reader(file, data, f"materials[{i}].")
    name = str(r.raw("name"))
    m_frac = r.number("mass_fraction", 1.0, positive=True)
    q_th = r.q("theoretical_capacity", "specific_capacity", positive=True)
    density = r.si("density", "kg/m**3", positive=True)
    radius = r.q("particle_radius", "length", positive=True)
    d_x: tuple[float, ...] = ()
    d_v: tuple[float, ...] = ()
    if r.has("diffusivity_table"):
        t = r.sub("diffusivity_table")
        xs = t.raw("stoichiometry")
        vs = t.raw("diffusivity")
        if not isinstance(xs, list) or not isinstance(vs, list) or len(xs) != len(vs) or len(xs) < 2:
            raise r.error("diffusivity_table", "needs equal-length lists 'stoichiometry' and 'diffusivity'")
        try:
            d_x = tuple(float(x) for x in xs)
            d_v = tuple(parse(v, "diffusivity") for v in vs)
        except (TypeError, ValueError, UnitError) as exc:
            raise r.error("diffusivity_table", str(exc)) from None
        if any(b <= a for a, b in zip(d_x, d_x[1:], strict=False)) or any(v <= 0 for v in d_v):
            raise r.error("diffusivity_table", "stoichiometry must increase and diffusivity be > 0")
        t.check_unknown()
        diff = float(sum(d_v) / len(d_v))
        r.used.add("diffusivity")
        if r.has("diffusivity"):
            raise r.error("diffusivity", "give either diffusivity or diffusivity_table, not both")
    else:
        diff = r.q("diffusivity", "diffusivity", positive=True)
    fade = r.sub("fade", None)
    lin, comps = 0.0, ()
    if fade is not None:
        lin = fade.number("linear_per_cycle", 0.0)
        raw = fade.raw("components", [])
        try:
            comps = tuple((float(a), float(b)) for a, b in raw)
        except (TypeError, ValueError):
            raise fade.error("components", "expected a list of [fraction, cycles]") from None
        fade.check_unknown()
    sites = _sites(r, "sites")
    sites_d = _sites(r, "sites_desodiation") if r.has("sites_desodiation") else None
    m = Material(
        name=name, mass_fraction=m_frac, theoretical_capacity=q_th, density=density,
        particle_radius=radius, diffusivity=diff, diffusivity_x=d_x, diffusivity_values=d_v,
        diffusion_activation_energy=r.q("diffusion_activation_energy", "molar_energy", 0.0),
        exchange_current_density=r.si("exchange_current_density", "A/m**2", positive=True),
        charge_transfer_activation_energy=r.q("charge_transfer_activation_energy", "molar_energy", 0.0),
        sites=sites, sites_desodiation=sites_d,
        hysteresis_rate=r.number("hysteresis_rate", 20.0, positive=True),
        initial_stoichiometry=r.number("initial_stoichiometry", 0.005),
        fade_linear=lin, fade_components=comps,
    )
    r.check_unknown()
    return m


def parse_preset(text: str, file: str = "<preset>") -> Preset:
    """Read a preset from YAML text. Bad content raises ProtocolError with file:line."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ProtocolError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file,
                            mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ProtocolError("a preset must be a YAML mapping", file, 1)
    r = _Reader(file, data)
    name = str(r.raw("name"))
    c = r.sub("cell")
    if c is None:
        raise r.error("cell", "is required")
    cell = Cell(
        name=str(c.raw("name", name)),
        active_mass=c.q("active_mass", "mass", positive=True),
        area=c.q("area", "area", positive=True),
        nominal_specific_capacity=c.q("nominal_specific_capacity", "specific_capacity", positive=True),
        material=str(c.raw("material", "")),
        counter_electrode=str(c.raw("counter_electrode", "Na metal")),
    )
    c.check_unknown()
    mats_raw = r.raw("materials")
    if not isinstance(mats_raw, list) or not mats_raw:
        raise r.error("materials", "expected a non-empty list of materials")
    mats = tuple(_material(file, m, i, "") for i, m in enumerate(mats_raw))
    total = sum(m.mass_fraction for m in mats)
    if abs(total - 1.0) > 1e-6:
        raise r.error("materials", f"mass fractions must add up to 1, got {total:g}")
    win = r.raw("window", ["0 V", "2.5 V"])
    try:
        window = (parse(win[0], "voltage"), parse(win[1], "voltage"))
    except (UnitError, TypeError, IndexError, KeyError) as exc:
        raise r.error("window", f"expected [low, high] voltages: {exc}") from None
    kw: dict[str, Any] = {}
    ce = r.sub("counter_electrode", None)
    if ce is not None:
        kw["counter_exchange_current_density"] = ce.si("exchange_current_density", "A/m**2", positive=True)
        kw["counter_activation_energy"] = ce.q("activation_energy", "molar_energy", 0.0)
        kw["counter_double_layer_capacitance"] = ce.si("double_layer_capacitance", "F/m**2", 0.1, positive=True)
        ce.check_unknown()
    sei = r.sub("sei", None)
    if sei is not None:
        kw["sei_capacity"] = sei.q("capacity", "specific_capacity", 0.0)
        kw["sei_rate"] = sei.number("rate", 0.5)
        kw["sei_slow_fraction"] = sei.number("slow_fraction", 0.0)
        sei.check_unknown()
    th = r.sub("thermal", None)
    if th is not None:
        kw["thermal_time_constant"] = th.q("time_constant", "time", 300.0, positive=True)
        kw["chamber_ramp_rate"] = th.si("chamber_ramp_rate", "K/s", 2.0 / 60.0, positive=True)
        th.check_unknown()
    fail = r.sub("failure", None)
    if fail is not None:
        after = fail.raw("soft_short_after_cycles", None)
        if after is not None and (not isinstance(after, int) or after < 1):
            raise fail.error("soft_short_after_cycles", "expected a whole number of cycles >= 1")
        kw["soft_short_after_cycles"] = after
        kw["soft_short_resistance"] = fail.q("soft_short_resistance", "resistance", 2000.0, positive=True)
        fail.check_unknown()
    nz = r.sub("noise", None)
    if nz is not None:
        kw["noise_voltage"] = nz.q("voltage", "voltage", 100e-6)
        kw["noise_current_relative"] = nz.number("current_relative", 1e-4)
        kw["noise_current"] = nz.q("current", "current", 1e-9)
        kw["voltage_resolution"] = nz.q("voltage_resolution", "voltage", 10e-6)
        kw["current_resolution"] = nz.q("current_resolution", "current", 1e-9)
        kw["noise_temperature"] = nz.q("temperature", "temperature_difference", 0.05)
        kw["noise_impedance_relative"] = nz.number("impedance_relative", 1e-3)
        nz.check_unknown()
    num = r.sub("numerics", None)
    if num is not None:
        n = num.raw("shells", 48)
        if not isinstance(n, int) or n < 4:
            raise num.error("shells", "expected a whole number >= 4")
        kw["shells"] = n
        kw["shell_ratio"] = num.number("shell_ratio", 1.2, positive=True)
        num.check_unknown()
    p = Preset(
        name=name, default_cell=cell, materials=mats,
        series_resistance=r.q("series_resistance", "resistance", positive=True),
        series_resistance_activation_energy=r.q("series_resistance_activation_energy", "molar_energy", 0.0),
        double_layer_capacitance=r.si("double_layer_capacitance", "F/m**2", 0.2, positive=True),
        reference_temperature=r.q("reference_temperature", "temperature", 298.15, positive=True),
        window=window, description=str(r.raw("description", "")), source=file, **kw,
    )
    r.check_unknown()
    if not math.isfinite(p.series_resistance):
        raise r.error("series_resistance", "must be finite")
    return p


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (sim/NAME.yaml) or a preset file by path."""
    if isinstance(name_or_path, Preset):
        return name_or_path
    try:
        path = resolve_data_file(name_or_path, "sim")
    except FileNotFoundError:
        try:
            from ..paths import data_dir

            known = ", ".join(sorted(p.stem for p in data_dir("sim").glob("*.yaml")))
        except FileNotFoundError:
            known = "none"
        raise ConfigError(f"unknown simulator preset {str(name_or_path)!r}: give a preset file path "
                          f"or one of: {known}") from None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    preset = _PRESETS.get(key)
    if preset is None:  # parsed once per file version (a rack of channels shares the frozen preset)
        preset = _PRESETS[key] = parse_preset(path.read_text(encoding="utf-8"), str(path))
    return preset


_PRESETS: dict[tuple[str, int, int], Preset] = {}
