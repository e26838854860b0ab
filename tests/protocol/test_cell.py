"""The cell: protocol cell block < --cell file < command-line overrides."""

from __future__ import annotations

import pytest

from cyclerctl.errors import ConfigError, ProtocolError
from cyclerctl.protocol import compile_protocol, load_cell, load_text, resolve_cell

TEXT = """cyclerctl: 1
name: t
cell: {name: A, active_mass: 4.3 mg, area: 1.131 cm^2, nominal_specific_capacity: 300 mAh/g, material: hard carbon}
safety: {voltage: [-0.05 V, 3 V], current: 5 mA}
steps:
  - Discharge at 30 mA/g until 0 V
"""


def test_protocol_cell_block_in_si() -> None:
    cell = resolve_cell(load_text(TEXT))
    assert cell.name == "A" and cell.material == "hard carbon"
    assert cell.active_mass == pytest.approx(4.3e-6)
    assert cell.area == pytest.approx(1.131e-4)
    assert cell.nominal_specific_capacity == pytest.approx(300 * 3600)
    assert cell.one_c_current == pytest.approx(1.29e-3)


def test_cell_file_then_flags_override(tmp_path) -> None:
    f = tmp_path / "cell.yaml"
    f.write_text("cell:\n  name: B\n  active_mass: 3.4 mg\n")
    assert load_cell(f)["active_mass"] == "3.4 mg"
    p = load_text(TEXT)
    cell = resolve_cell(p, f)
    assert cell.name == "B" and cell.active_mass == pytest.approx(3.4e-6) and cell.area == pytest.approx(1.131e-4)
    cell = resolve_cell(p, f, {"mass": "2 mg", "nominal_capacity": "0.5 mAh"})
    assert cell.active_mass == pytest.approx(2e-6)
    assert cell.nominal_specific_capacity == pytest.approx(0.5 * 3.6 / 2e-6)  # an absolute capacity / mass
    program = compile_protocol(p, cell)
    assert program.instructions[0].current == pytest.approx(-30e-3 * 2e-3)


def test_bad_cell_file_points_into_it(tmp_path) -> None:
    f = tmp_path / "cell.yaml"
    f.write_text("active_mass: 3.4 mg\narea: 5 V\n")
    with pytest.raises(ProtocolError) as info:
        resolve_cell(load_text(TEXT), f)
    assert (info.value.file, info.value.line) == (str(f), 2) and "expected an area" in str(info.value)
    f.write_text("active_mas: 3.4 mg\n")
    with pytest.raises(ProtocolError, match="did you mean 'active_mass'"):
        load_cell(f)


def test_bad_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--mass"):
        resolve_cell(load_text(TEXT), None, {"mass": "4.3"})
    with pytest.raises(ConfigError, match="must be positive"):
        resolve_cell(load_text(TEXT), None, {"area": "-1 cm^2"})
    with pytest.raises(ConfigError, match="unknown cell setting"):
        resolve_cell(load_text(TEXT), None, {"colour": "blue"})


def test_particle_radius_for_diffusion_analysis() -> None:
    p = load_text(TEXT.replace("material: hard carbon}", "material: hard carbon, particle_radius: 5 um}"))
    assert resolve_cell(p).particle_radius == pytest.approx(5e-6)
    assert resolve_cell(load_text(TEXT)).particle_radius is None


def test_load_cell_returns_the_keys_as_written(tmp_path) -> None:
    f = tmp_path / "cell.yaml"
    f.write_text("name: C\narea: 1.131 cm^2\n")
    values = load_cell(f)
    assert values == {"name": "C", "area": "1.131 cm^2"}
    assert values.where["area"] == (str(f), 2, 7)
