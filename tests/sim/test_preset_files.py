"""Preset files: shipped names, user paths, and clear errors with file:line."""

from __future__ import annotations

import pytest

from cyclerctl.errors import ConfigError, CyclerError, ProtocolError
from cyclerctl.paths import data_dir
from cyclerctl.sim import Preset, load_preset


@pytest.mark.parametrize("name", ["hard_carbon", "nano_sn", "sn_hc"])
def test_shipped_presets_load(name):
    p = load_preset(name)
    assert isinstance(p, Preset) and p.name == name
    cell = p.default_cell
    assert cell.active_mass == pytest.approx(3.4e-6)
    assert cell.area == pytest.approx(1.131e-4)
    assert cell.nominal_specific_capacity > 0
    for m in p.materials:
        assert m.particle_radius > 0 and m.diffusivity > 0 and m.exchange_current_density > 0
    assert (data_dir("sim") / f"{name}.yaml").is_file()


def test_user_preset_by_path(tmp_path):
    text = (data_dir("sim") / "hard_carbon.yaml").read_text().replace("name: hard_carbon", "name: my_carbon")
    f = tmp_path / "my.yaml"
    f.write_text(text)
    assert load_preset(str(f)).name == "my_carbon"


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="hard_carbon"):
        load_preset("no_such_preset")


@pytest.mark.parametrize("change,line_of,message", [
    ("series_resistance: 6 ohm", "series_resistance: 6 V", "expected a resistance"),
    ("    particle_radius: 0.67 um", "    particle_radius: -1 um", "must be > 0"),
    ("    density: 1.6 g/cm^3", "    density: 1.6", "bare number"),
    ("series_resistance: 6 ohm", "series_resistence: 6 ohm", "unknown key"),
    ("      - [0.063 V, 0.581, 0.48]", "      - [0.063 V, 0.581]", "site 4"),
])
def test_bad_preset_gets_file_and_line(tmp_path, change, line_of, message):
    text = (data_dir("sim") / "hard_carbon.yaml").read_text()
    assert change in text
    bad = text.replace(change, line_of)
    f = tmp_path / "bad.yaml"
    f.write_text(bad)
    with pytest.raises(ProtocolError) as e:
        load_preset(str(f))
    line = bad.splitlines().index(line_of) + 1
    assert e.value.line == line or e.value.line == line - 1 or message == "site 4"
    assert message in str(e.value)
    assert str(f) in str(e.value)
    assert isinstance(e.value, CyclerError) and "\n" not in str(e.value)


def test_not_yaml(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_preset(str(f))
