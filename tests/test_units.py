"""Units at the edges: text -> SI, wrong dimensions are clear errors."""

import math

import pytest

from cyclerctl.errors import UnitError
from cyclerctl.units import Context, fmt, parse, parse_list

CELL = Context(active_mass=3.4e-6, area=1.131e-4, nominal_capacity=300 * 3600 * 3.4e-6)


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("5 mA", "current", 5e-3),
        ("5 uA", "current", 5e-6),
        ("5 µA", "current", 5e-6),
        ("30 mA/g", "current", 30e-3 * 3.4e-3),
        ("0.5 mA/cm^2", "current", 0.5e-3 * 1.131),
        ("0.5 mA/cm²", "current", 0.5e-3 * 1.131),
        ("0.1C", "current", 0.1 * 300e-3 * 3.4e-3),
        ("C/10", "current", 0.1 * 300e-3 * 3.4e-3),
        ("2C", "current", 2 * 300e-3 * 3.4e-3),
        ("-0.08 A/g", "current", -0.08 * 3.4e-3),
        ("2.5 V", "voltage", 2.5),
        ("1 mV", "voltage", 1e-3),
        ("6 hours", "time", 21600),
        ("10 min", "time", 600),
        ("1 d", "time", 86400),
        ("1.2 mAh", "capacity", 1.2 * 3.6),
        ("1 A·h", "capacity", 3600),
        ("300 mAh/g", "capacity", 300 * 3.6 * 3.4e-3),
        ("300 mAh/g", "specific_capacity", 300 * 3600),
        ("0.2 mV/s", "scan_rate", 2e-4),
        ("10 mHz", "frequency", 1e-2),
        ("100 kHz", "frequency", 1e5),
        ("25 degC", "temperature", 298.15),
        ("-10 °C", "temperature", 263.15),
        ("298 K", "temperature", 298.0),
        ("1 mV/h", "voltage_slope", 1e-3 / 3600),
        ("99.5 %", "fraction", 0.995),
        ("3.4 mg", "mass", 3.4e-6),
        ("1.131 cm^2", "area", 1.131e-4),
    ],
)
def test_parse_to_si(text, kind, expected):
    assert math.isclose(parse(text, kind, CELL), expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("text", "kind", "ctx", "message"),
    [
        ("5 V", "current", CELL, "expected a current, got '5 V'"),
        ("30 mA/g", "current", Context(), "needs an active_mass"),
        ("0.1C", "current", Context(active_mass=1e-6), "C-rate"),
        ("0.5 mA/cm^2", "current", Context(), "electrode area"),
        ("300 mAh/g", "capacity", Context(), "needs an active_mass"),
        ("5", "voltage", CELL, "expected a voltage"),
        ("5 bananas", "voltage", CELL, "unknown unit"),
        ("fast", "scan_rate", CELL, "expected a scan rate"),
        ("1 h", "temperature", CELL, "expected a temperature"),
    ],
)
def test_wrong_input_is_a_clear_error(text, kind, ctx, message):
    with pytest.raises(UnitError, match=message.replace("(", r"\(")):
        parse(text, kind, ctx)


def test_bare_number_is_refused_with_a_hint():
    with pytest.raises(UnitError, match="bare number"):
        parse(2.5, "voltage")


def test_list_with_trailing_unit():
    assert parse_list("[0.1, 0.2, 0.5] mV/s", "scan_rate") == pytest.approx([1e-4, 2e-4, 5e-4])
    assert parse_list(["1 mV/s", "2 mV/s"], "scan_rate") == pytest.approx([1e-3, 2e-3])


def test_display_round_trip():
    assert fmt(1.3e-4, "current") == "130 µA"
    assert fmt(2e-4, "scan_rate") == "0.2 mV/s"
    assert fmt(21600, "time") == "6 h"
    assert fmt(298.15, "temperature") == "25 °C"
    assert fmt(0.995, "fraction") == "99.5 %"
