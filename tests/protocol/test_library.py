"""The shipped protocol library: every file is valid, names its paper and figure, and plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyclerctl.cli import main
from cyclerctl.paths import data_dir
from cyclerctl.program import ConstantCurrent, Impedance, LoopStart, Rest, SetTemperature, Sweep
from cyclerctl.protocol import compile_file, describe, rows

LIBRARY = sorted(data_dir("protocols").glob("*.yaml"))


def test_library_covers_the_workflows_of_the_papers() -> None:
    names = {p.stem for p in LIBRARY}
    assert {"hc_formation_cycling", "snhc_rate_capability", "snhc_long_cycling_1p7", "snhc_long_cycling_4p2",
            "hc_gitt_second_cycle", "snhc_cv_0p2", "snhc_cv_multirate", "hc_eis_ocv", "snhc_eis_temperature",
            "demo_hard_carbon"} <= names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_each_protocol_compiles_and_says_what_it_reproduces(path: Path) -> None:
    header = path.read_text().split("cyclerctl: 1")[0]
    assert header.startswith("#") and len(header) > 80
    program = compile_file(path)
    assert program.steps() and all(r["kind"] for r in rows(program))
    assert program.safety.voltage_min < program.safety.voltage_max


def test_validate_passes_on_the_whole_library(capsys) -> None:
    assert main(["validate", *map(str, LIBRARY)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(LIBRARY) and all(line.endswith("steps)") for line in out)


def test_formation_and_cycling_is_200_cycles_at_30_mA_per_g_after_a_6_h_rest() -> None:
    p = compile_file(data_dir("protocols") / "hc_formation_cycling.yaml")
    rest, loop, dis, chg, _ = p.instructions
    assert isinstance(rest, Rest) and rest.ends[0].value == 6 * 3600
    assert loop.count == 200
    assert dis.current == pytest.approx(-30e-3 * 4.3e-3) and dis.ends[0].value == 0.0
    assert chg.current == pytest.approx(30e-3 * 4.3e-3) and chg.ends[0].value == 2.5


def test_rate_capability_steps_through_the_papers_currents() -> None:
    p = compile_file(data_dir("protocols") / "snhc_rate_capability.yaml")
    charges = [s.current for s in p.steps() if isinstance(s, ConstantCurrent) and s.current > 0]
    per_gram = [round(c / 1e-6 / 1e3, 3) for c in charges]  # A/g for a 1 mg electrode
    assert per_gram == [0.08, 0.17, 0.42, 0.84, 1.7, 4.2, 8.4, 0.17]


def test_temperature_series_sets_each_temperature_then_measures_eis() -> None:
    p = compile_file(data_dir("protocols") / "snhc_eis_temperature.yaml")
    temps = [round(s.temperature - 273.15) for s in p.steps() if isinstance(s, SetTemperature)]
    assert temps == [-10, 0, 10, 20, 30, 40, 50, 25]
    kinds = [type(s).__name__ for s in p.steps()]
    assert kinds.count("Impedance") == 7


def test_multirate_cv_rates() -> None:
    p = compile_file(data_dir("protocols") / "snhc_cv_multirate.yaml")
    assert [s.scan_rate for s in p.steps() if isinstance(s, Sweep)] == pytest.approx([1e-4, 2e-4, 5e-4, 1e-3, 2e-3])


def test_demo_is_formation_gitt_eis_and_rate_steps() -> None:
    p = compile_file(data_dir("protocols") / "demo_hard_carbon.yaml")
    loops = [i for i in p.instructions if isinstance(i, LoopStart)]
    assert loops[0].count == 2  # formation
    gitt = [s for s in p.steps() if s.technique == "gitt"]
    pulses = [s for s in gitt if dict(s.tags).get("role") == "pulse"]
    assert [s.direction for s in pulses] == [-1, 1]
    assert all(s.current == pytest.approx(s.direction * 30e-3 * 4.3e-3) for s in pulses)
    eis = [s for s in p.steps() if isinstance(s, Impedance)]
    assert len(eis) == 1 and eis[0].bias is None and (eis[0].freq_start, eis[0].freq_stop) == (1e5, 1e-2)
    rates = sorted({round(abs(s.current) / 4.3e-6, 6) for s in p.steps()
                    if isinstance(s, ConstantCurrent) and s.technique == "gcd"})
    assert rates == [30.0, 60.0, 150.0, 300.0]  # mA/g (A/kg)
    # GITT is bounded: at most 40 pulses each way
    assert [lp.at_most for lp in loops if lp.count is None] == [40, 40]


def test_describe_gives_a_table_with_a_row_per_instruction() -> None:
    p = compile_file(data_dir("protocols") / "hc_gitt_second_cycle.yaml")
    table = describe(p)
    assert table.row_count == len(p.instructions)
    r = rows(p)
    pulse = next(x for x in r if x["kind"] == "CC_DCHG (gitt)")
    assert "mA/g" in pulse["setpoint"] and pulse["si"].endswith(" A")
    assert "V <= 1 mV -> #" in pulse["ends"]


@pytest.mark.parametrize("name", ["hc_cv_0p5", "snhc_cv_0p2", "snhc_cv_multirate"])
def test_cv_protocols_sweep_from_the_ocv_after_a_rest(name: str) -> None:
    """No CV protocol steps the cell from its open-circuit voltage to a fixed start potential."""
    p = compile_file(data_dir("protocols") / f"{name}.yaml")
    sweeps = [k for k, s in enumerate(p.instructions) if isinstance(s, Sweep)]
    assert sweeps and all(p.instructions[k].from_ocv and isinstance(p.instructions[k - 1], Rest) for k in sweeps)
