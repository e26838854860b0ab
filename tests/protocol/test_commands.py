"""`cyclerctl validate` and `cyclerctl plan` as a user runs them."""

from __future__ import annotations

from cyclerctl.cli import main
from cyclerctl.paths import data_dir
from cyclerctl.protocol import commands

DEMO = str(data_dir("protocols") / "demo_hard_carbon.yaml")


def test_plan_prints_the_table_and_says_when_there_is_no_estimate(capsys, monkeypatch) -> None:
    monkeypatch.setattr(commands, "_load_estimator", lambda: None)
    assert main(["plan", DEMO]) == 0
    out = capsys.readouterr().out
    assert "Hard carbon demo" in out and "CC_DCHG (gitt)" in out and "EIS" in out
    assert "-129 µA (-30 mA/g)" in out
    assert "estimate: simulator not available" in out


def test_plan_prints_the_simulators_estimate_when_it_exists(capsys, monkeypatch) -> None:
    seen = {}

    def estimate(program, preset):
        seen["preset"] = preset
        return {"duration_s": 90_000.0, "samples": 12_345, "bytes": 2_500_000}

    monkeypatch.setattr(commands, "_load_estimator", lambda: estimate)
    assert main(["plan", "demo_hard_carbon", "--preset", "sn_hc"]) == 0  # a shipped name works too
    out = capsys.readouterr().out
    assert seen["preset"] == "sn_hc"
    assert "estimate (sn_hc): duration 25 h, 12,345 samples, 2.5 MB of data" in out


def test_plan_overrides_the_cell(capsys, monkeypatch) -> None:
    monkeypatch.setattr(commands, "_load_estimator", lambda: None)
    assert main(["plan", DEMO, "--mass", "2mg", "--nominal-capacity", "250 mAh/g"]) == 0
    out = capsys.readouterr().out
    assert "active mass 2 mg" in out and "1C = 250 mA/g" in out and "-60 µA (-30 mA/g)" in out


def test_user_mistakes_are_one_line_errors(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(commands, "_load_estimator", lambda: None)
    assert main(["plan", DEMO, "--mass", "lots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --mass:") and "\n" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml: no such file" in err and "Traceback" not in err


def test_default_preset_follows_the_cells_material() -> None:
    from cyclerctl.program import Cell

    assert commands.default_preset(Cell(material="hard carbon (NPNHC)")) == "hard_carbon"
    assert commands.default_preset(Cell(material="Sn@HC-2-1")) == "sn_hc"
    assert commands.default_preset(Cell(material="nano Sn")) == "nano_sn"
    assert commands.default_preset(Cell()) == "hard_carbon"


def test_help_says_what_with_an_example(capsys) -> None:
    for cmd in ("validate", "plan"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Example: cyclerctl" in out


def test_plan_with_a_cell_file(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(commands, "_load_estimator", lambda: None)
    cell = tmp_path / "cell.yaml"
    cell.write_text("name: coin-7\nactive_mass: 3.4 mg\n")
    assert main(["plan", DEMO, "--cell", str(cell)]) == 0
    out = capsys.readouterr().out
    assert "cell: coin-7" in out and "active mass 3.4 mg" in out and "-102 µA (-30 mA/g)" in out
