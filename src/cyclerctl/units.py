"""Quantities at the edges: text such as "30 mA/g", "0.1C", "0.2 mV/s", "25 degC" -> SI floats, and back.

Everything inside cyclerctl is SI (s, V, A, C, K, m, kg, Hz, ohm). This module is the one place where
text with units becomes a number and a number becomes text for a person. Parsing uses pint.

Context needed by some quantities:
- specific currents/capacities (mA/g, mAh/g) need the cell's active mass,
- areal currents (mA/cm^2) need the electrode area,
- C-rates ("0.1C", "C/10", "2C") need the nominal capacity (nominal specific capacity x active mass).
"""

from __future__ import annotations

import math
import re
import tokenize
from dataclasses import dataclass
from functools import lru_cache

import pint

from .errors import UnitError

__all__ = [
    "Context",
    "KINDS",
    "parse",
    "parse_list",
    "fmt",
    "is_c_rate",
    "ureg",
]


@lru_cache(maxsize=1)
def _registry() -> pint.UnitRegistry:
    reg = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
    # "mAh", "Ah" are spelled by everyone in the field; pint knows ampere_hour as "Ah".
    return reg


ureg = _registry()
Q_ = ureg.Quantity


@dataclass(frozen=True, slots=True)
class Context:
    """What a quantity may need from the cell (all SI): active mass (kg), electrode area (m^2),
    nominal capacity (C). None means unknown; a quantity that needs it is then an error."""

    active_mass: float | None = None
    area: float | None = None
    nominal_capacity: float | None = None


# kind -> (description for messages, pint dimensionality, SI unit string)
_DIMS: dict[str, tuple[str, str, str]] = {
    "current": ("a current", "[current]", "A"),
    "voltage": ("a voltage", "[electric_potential]", "V"),
    "time": ("a time", "[time]", "s"),
    "capacity": ("a capacity", "[current] * [time]", "C"),
    "specific_capacity": ("a specific capacity", "[current] * [time] / [mass]", "C/kg"),
    "scan_rate": ("a scan rate", "[electric_potential] / [time]", "V/s"),
    "voltage_slope": ("a voltage slope", "[electric_potential] / [time]", "V/s"),
    "frequency": ("a frequency", "1 / [time]", "Hz"),
    "temperature": ("a temperature", "[temperature]", "K"),
    "temperature_difference": ("a temperature difference", "[temperature]", "K"),
    "mass": ("a mass", "[mass]", "kg"),
    "area": ("an area", "[length] ** 2", "m**2"),
    "length": ("a length", "[length]", "m"),
    "resistance": ("a resistance", "[electric_potential] / [current]", "ohm"),
    "capacitance": ("a capacitance", "[current] * [time] / [electric_potential]", "F"),
    "diffusivity": ("a diffusion coefficient", "[length] ** 2 / [time]", "m**2/s"),
    "energy": ("an energy", "[energy]", "J"),
    "molar_energy": ("a molar energy", "[energy] / [substance]", "J/mol"),
    "fraction": ("a fraction or percentage", "", ""),
}
KINDS = tuple(_DIMS)

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_C_RATE = re.compile(rf"^\s*(?:(?P<mult>{_NUMBER})\s*C|C\s*/\s*(?P<div>{_NUMBER})|(?P<bare>C))\s*$")
_SPLIT = re.compile(rf"^\s*(?P<num>{_NUMBER})\s*(?P<unit>.*?)\s*$")


def _normalise(unit: str) -> str:
    u = unit.strip()
    u = u.replace("µ", "u").replace("μ", "u").replace("·", "*").replace("⋅", "*")
    u = u.replace("²", "**2").replace("³", "**3").replace("^", "**")
    u = u.replace("Ω", "ohm")
    u = re.sub(r"\bdeg\s*C\b|°C", "degC", u)
    u = re.sub(r"\bdeg\s*F\b|°F", "degF", u)
    u = re.sub(r"\bA\s*\*?\s*h\b", "Ah", u)  # "A h", "A*h" -> "Ah"
    u = re.sub(r"\b([munk]?)Ah\b", r"\1ampere_hour", u)
    return u


def is_c_rate(text: str) -> bool:
    """True if `text` is a C-rate such as "0.1C", "C/10", "2 C"."""
    return bool(_C_RATE.match(str(text)))


def _quantity(text: str, kind_desc: str) -> pint.Quantity:
    m = _SPLIT.match(text)
    if not m:
        raise UnitError(f"expected {kind_desc} with a unit, got {text!r}")
    num = float(m.group("num"))
    unit = _normalise(m.group("unit"))
    if unit in ("%", "percent"):
        return Q_(num / 100.0, "")
    try:
        return Q_(num, unit) if unit else Q_(num, "")
    except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, AttributeError,
            TypeError, ValueError, AssertionError, SyntaxError, KeyError, tokenize.TokenError) as exc:
        raise UnitError(f"unknown unit {m.group('unit')!r} in {text!r} (expected {kind_desc})") from exc


def _needs(what: str, text: str, value: float | None, name: str) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        raise UnitError(f"{text!r} is {what}: the cell needs {name} (set it in the protocol's cell block or with --cell)")
    return value


def parse(text: str | int | float, kind: str, ctx: Context | None = None) -> float:
    """Parse `text` as a quantity of `kind` and return it in SI.

    Currents also accept specific (mA/g), areal (mA/cm^2) values and C-rates; capacities accept
    specific capacities (mAh/g). A bare number is refused (every number in a protocol has a unit),
    except for `fraction` where 0.995 and "99.5 %" both mean 0.995."""
    if kind not in _DIMS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    desc, dim, si = _DIMS[kind]
    ctx = ctx or Context()
    if isinstance(text, bool):
        raise UnitError(f"expected {desc}, got {text!r}")
    if isinstance(text, (int, float)):
        if kind == "fraction":
            return float(text)
        raise UnitError(f"expected {desc} with a unit, got the bare number {text!r} (write e.g. '{text} {si}')")
    text = str(text).strip()
    if not text:
        raise UnitError(f"expected {desc}, got an empty value")

    if kind == "current":
        m = _C_RATE.match(text)
        if m:
            if m.group("mult") is not None:
                rate = float(m.group("mult"))
            elif m.group("div") is not None:
                div = float(m.group("div"))
                if div == 0:
                    raise UnitError(f"C-rate {text!r} divides by zero")
                rate = 1.0 / div
            else:
                rate = 1.0
            cap = _needs("a C-rate", text, ctx.nominal_capacity, "active_mass and nominal_specific_capacity")
            return rate * cap / 3600.0

    q = _quantity(text, desc)
    if not math.isfinite(q.magnitude):
        raise UnitError(f"expected a finite {desc[2:] if desc.startswith('a ') else desc}, got {text!r}")

    if kind == "fraction":
        if q.dimensionless:
            return float(q.to("").magnitude)
        raise UnitError(f"expected {desc}, got {text!r}")
    if kind == "temperature":
        if q.check("[temperature]"):
            return float(q.to("kelvin").magnitude)
        raise UnitError(f"expected {desc}, got {text!r}")
    if kind == "temperature_difference":
        if q.check("[temperature]"):
            # a difference: 1 degC == 1 K
            u = str(q.units)
            if u in ("degree_Celsius", "kelvin"):
                return float(q.magnitude)
            if u == "degree_Fahrenheit":
                return float(q.magnitude) * 5.0 / 9.0
            return float(q.to("delta_degC").magnitude)
        raise UnitError(f"expected {desc}, got {text!r}")

    if q.check(dim):
        return float(q.to(si).magnitude)
    if kind == "current":
        if q.check("[current] / [mass]"):
            mass = _needs("a specific current", text, ctx.active_mass, "an active_mass")
            return float(q.to("A/kg").magnitude) * mass
        if q.check("[current] / [length] ** 2"):
            area = _needs("an areal current", text, ctx.area, "an electrode area")
            return float(q.to("A/m**2").magnitude) * area
    if kind == "capacity" and q.check("[current] * [time] / [mass]"):
        mass = _needs("a specific capacity", text, ctx.active_mass, "an active_mass")
        return float(q.to("C/kg").magnitude) * mass
    raise UnitError(f"expected {desc}, got {text!r}")


_LIST = re.compile(r"^\s*\[(?P<items>[^\]]*)\]\s*(?P<unit>.*?)\s*$")


def parse_list(value: str | list, kind: str, ctx: Context | None = None) -> list[float]:
    """Parse "[0.1, 0.2, 0.5] mV/s" (unit after the list) or a YAML list of quantities."""
    if isinstance(value, list):
        return [parse(v, kind, ctx) for v in value]
    m = _LIST.match(str(value))
    if not m:
        return [parse(value, kind, ctx)]
    unit = m.group("unit")
    items = [s.strip() for s in m.group("items").split(",") if s.strip()]
    if not items:
        raise UnitError(f"empty list {value!r}")
    return [parse(f"{it} {unit}".strip() if unit and _SPLIT.match(it) and not _SPLIT.match(it).group("unit") else it, kind, ctx)
            for it in items]


# ---- display -------------------------------------------------------------------------------------

_DISPLAY: dict[str, list[tuple[float, str]]] = {
    # (scale of unit in SI, unit text), largest first
    "current": [(1.0, "A"), (1e-3, "mA"), (1e-6, "µA"), (1e-9, "nA")],
    "voltage": [(1.0, "V"), (1e-3, "mV"), (1e-6, "µV")],
    "capacity": [(3600.0, "Ah"), (3.6, "mAh"), (3.6e-3, "µAh")],
    "scan_rate": [(1.0, "V/s"), (1e-3, "mV/s")],
    "voltage_slope": [(1e-3 / 3600.0, "mV/h")],
    "frequency": [(1e6, "MHz"), (1e3, "kHz"), (1.0, "Hz"), (1e-3, "mHz")],
    "resistance": [(1e6, "MΩ"), (1e3, "kΩ"), (1.0, "Ω"), (1e-3, "mΩ")],
    "capacitance": [(1.0, "F"), (1e-3, "mF"), (1e-6, "µF"), (1e-9, "nF")],
    "mass": [(1.0, "kg"), (1e-3, "g"), (1e-6, "mg"), (1e-9, "µg")],
    "area": [(1.0, "m²"), (1e-4, "cm²"), (1e-6, "mm²")],
    "length": [(1.0, "m"), (1e-3, "mm"), (1e-6, "µm"), (1e-9, "nm")],
    "energy": [(3600.0, "Wh"), (3.6, "mWh"), (3.6e-3, "µWh")],
    "specific_capacity": [(3600.0, "mAh/g")],
    "diffusivity": [(1e-4, "cm²/s")],
    "molar_energy": [(1e3, "kJ/mol")],
}


def fmt(value: float | None, kind: str, digits: int = 4) -> str:
    """A person's view of an SI value: fmt(1.3e-4, "current") -> "130 µA"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "time":
        a = abs(value)
        if a >= 2 * 86400:
            return f"{value / 86400:.{digits}g} d"
        if a >= 2 * 3600:
            return f"{value / 3600:.{digits}g} h"
        if a >= 120:
            return f"{value / 60:.{digits}g} min"
        if 0 < a < 1e-6:
            return f"{value * 1e9:.{digits}g} ns"
        if 0 < a < 1e-3:
            return f"{value * 1e6:.{digits}g} µs"
        return f"{value:.{digits}g} s"
    if kind == "temperature":
        return f"{value - 273.15:.{digits}g} °C"
    if kind == "temperature_difference":
        return f"{value:.{digits}g} K"
    if kind == "fraction":
        return f"{value * 100:.{digits}g} %"
    scales = _DISPLAY.get(kind)
    if not scales:
        si = _DIMS.get(kind, ("", "", ""))[2]
        return f"{value:.{digits}g} {si}".strip()
    a = abs(value)
    for scale, unit in scales:
        if a >= scale:
            return f"{value / scale:.{digits}g} {unit}"
    scale, unit = scales[-1]
    return f"{value / scale:.{digits}g} {unit}"
