"""Data recorded elsewhere: BDF CSV/Parquet in, steps inferred from the current, same operators."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cyclerctl.analysis.bdf_import import infer_steps, load_cell_file, read_bdf
from cyclerctl.analysis.offline import read_metric_table
from cyclerctl.analysis.synthetic import gitt_pulse_train
from cyclerctl.cli import main
from cyclerctl.errors import ConfigError

DATA = Path(__file__).parent / "data"


def test_pybamm_spm_gitt_through_the_bdf_import_path(tmp_path, capsys):
    """A GITT pulse train simulated by PyBaMM's SPM with constant D (bench/pybamm_gitt_fixture.py):
    the sphere-fit D is within 5 % of PyBaMM's D on every pulse it does not flag."""
    meta = json.loads((DATA / "pybamm_spm_gitt.json").read_text())
    cell = tmp_path / "cell.yaml"
    cell.write_text(f"particle_radius: {meta['particle_radius_m'] * 1e6} um\nkind: anode_half_cell\n")
    out = tmp_path / "m"
    assert main(["analyze", str(DATA / "pybamm_spm_gitt.bdf.csv"), "--cell", str(cell), "--out", str(out)]) == 0
    assert "gitt: 6 pulses" in capsys.readouterr().out
    rows = read_metric_table(out / "gitt.parquet")
    valid = [r for r in rows if r["valid"]]
    assert len(valid) >= 5
    for r in valid:
        assert r["diffusion_coefficient_cm2_s"] == pytest.approx(meta["diffusion_coefficient_cm2_s"], rel=0.05, abs=0)
        assert r["direction"] == "discharge"


def test_synthetic_gitt_as_bdf_parquet_with_machine_names(tmp_path):
    r, d = 3.5e-6, 2e-15
    cols, _ = gitt_pulse_train(d=d, radius=r, q_th=3.6, ocv_slope=-1.0, current=-2e-4, pulse=300.0,
                               rest=40000.0, n_pulses=4, r_ohm=10.0)
    table = pa.table({k: cols[k] for k in ("test_time_second", "voltage_volt", "current_ampere")})
    path = tmp_path / "x.bdf.parquet"
    pq.write_table(table, path)
    steps = infer_steps(read_bdf(path))
    assert [s.technique for s in steps[1:]] == ["gitt"] * 8
    assert [s.role for s in steps[1:3]] == ["pulse", "relax"]
    (tmp_path / "cell.yaml").write_text("cell:\n  active_mass: 3.4 mg\n  particle_radius: 3.5 um\n")
    assert main(["analyze", str(path), "--cell", str(tmp_path / "cell.yaml")]) == 0
    rows = read_metric_table(tmp_path / "x.metrics" / "gitt.parquet")
    assert len(rows) == 4
    assert [row["valid"] for row in rows] == [False, True, True, True]  # the first: OCV curvature unknown
    for row in rows:
        assert row["diffusion_coefficient_cm2_s"] == pytest.approx(d * 1e4, rel=0.02, abs=0)


def test_cycles_are_inferred_from_current_sign_changes(tmp_path):
    t, v, i = [], [], []
    t0 = 0.0
    for _ in range(3):
        for cur, dur in ((-1e-4, 3000.0), (0.0, 600.0), (1e-4, 2700.0), (0.0, 600.0)):
            tt = np.arange(0.0, dur, 10.0)
            t.append(t0 + tt)
            v.append(1.0 - cur * 1e3 * tt / dur)
            i.append(np.full(tt.size, cur))
            t0 += dur
    path = tmp_path / "gcd.bdf.csv"
    with path.open("w") as f:
        f.write("Test Time / s,Voltage / V,Current / A\n")
        for row in zip(np.concatenate(t), np.concatenate(v), np.concatenate(i), strict=True):
            f.write(f"{row[0]:.3f},{row[1]:.6f},{row[2]:.6e}\n")
    (tmp_path / "cell.yaml").write_text("active_mass: 1 mg\n")
    assert main(["analyze", str(path), "--cell", str(tmp_path / "cell.yaml")]) == 0
    cycles = read_metric_table(tmp_path / "gcd.metrics" / "cycle.parquet")
    assert [c["cycle_count"] for c in cycles] == [1, 2, 3]
    for c in cycles:
        assert c["coulombic_efficiency"] == pytest.approx(2700 / 3000, rel=0.01)
        assert c["specific_discharge_capacity_mah_g"] == pytest.approx(1e-4 * 2990 / 3.6 / 1e-3, rel=0.01)


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "m.bdf.csv"
    missing.write_text("Test Time / s,Voltage / V\n0,1\n1,1\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_bdf(missing)
    backwards = tmp_path / "b.bdf.csv"
    backwards.write_text("Test Time / s,Voltage / V,Current / A\n0,1,0\n2,1,0\n1,1,0\n")
    with pytest.raises(ConfigError, match="backwards"):
        read_bdf(backwards)
    other = tmp_path / "x.txt"
    other.write_text("hello")
    assert main(["analyze", str(other)]) == 2
    assert "expected a .bdf.csv" in capsys.readouterr().err
    cell = tmp_path / "c.yaml"
    cell.write_text("particle_radius: 3.5 V\n")
    with pytest.raises(ConfigError, match="particle_radius"):
        load_cell_file(cell)
    cell.write_text("active_mass: heavy\n")
    assert main(["analyze", str(backwards), "--cell", str(cell)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_impedance_waveform_from_elsewhere_is_demodulated_and_fitted(tmp_path, capsys):
    """A potentiostatic sine recorded by another instrument as plain samples (time, voltage, current and
    the excitation frequency, no impedance columns) after a rest: the steps are inferred, the
    frequencies demodulated and the spectrum fitted."""
    from cyclerctl.analysis.synthetic import randles_sphere_impedance, sine_response

    f = np.logspace(4, -2, 37)
    z = randles_sphere_impedance(f, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
    wave = sine_response(f, z, amplitude=5e-3, samples_per_period=32, periods=3, galvanostatic=False, v_dc=0.52,
                         t_start=3600.0)
    rest_t = np.arange(0.0, 3600.0, 60.0)
    cols = {"test_time_second": np.r_[rest_t, wave["test_time_second"]],
            "voltage_volt": np.r_[np.full(rest_t.size, 0.52), wave["voltage_volt"]],
            "current_ampere": np.r_[np.zeros(rest_t.size), wave["current_ampere"]],
            "frequency_hertz": np.r_[np.full(rest_t.size, np.nan), wave["frequency_hertz"]]}
    path = tmp_path / "wave.bdf.csv"
    names = {"test_time_second": "Test Time / s", "voltage_volt": "Voltage / V", "current_ampere": "Current / A",
             "frequency_hertz": "Frequency / Hz"}
    with path.open("w") as fh:
        fh.write(",".join(names[k] for k in cols) + "\n")
        for row in zip(*cols.values(), strict=True):
            fh.write(",".join("" if np.isnan(x) else repr(float(x)) for x in row) + "\n")
    assert [s.technique for s in infer_steps(read_bdf(path))] == ["rest", "eis"]
    assert main(["analyze", str(path), "--out", str(tmp_path / "m")]) == 0
    assert "eis: 1 spectrum (1 from the waveform), 1 valid, R_ct 60" in capsys.readouterr().out
    (row,) = read_metric_table(tmp_path / "m" / "eis.parquet")
    assert row["acquisition"] == "waveform" and row["valid"]
    assert row["charge_transfer_resistance_ohm"] == pytest.approx(60, rel=0.02)
    assert row["double_layer_capacitance_farad"] == pytest.approx(2e-5, rel=0.02, abs=0)
    assert row["series_resistance_ohm"] == pytest.approx(5, rel=0.01)


def test_a_cell_file_without_radius_or_capacity_says_what_it_leaves_out(tmp_path, capsys):
    cols, _ = gitt_pulse_train(d=2e-15, radius=3.5e-6, q_th=3.6, ocv_slope=-1.0, current=-2e-4, pulse=300.0,
                               rest=40000.0, n_pulses=3)
    path = tmp_path / "g.bdf.parquet"
    pq.write_table(pa.table({k: cols[k] for k in ("test_time_second", "voltage_volt", "current_ampere")}), path)
    assert main(["analyze", str(path)]) == 0
    err = capsys.readouterr().err
    assert "note: no particle_radius" in err and "not diffusion coefficients" in err
    assert "note: no active_mass and nominal_specific_capacity" in err and "|ΔE_s| < 2 mV alone" in err
    (tmp_path / "cell.yaml").write_text("active_mass: 3.4 mg\nnominal_specific_capacity: 300 mAh/g\n"
                                        "particle_radius: 3.5 um\n")
    assert main(["analyze", str(path), "--cell", str(tmp_path / "cell.yaml")]) == 0
    assert "note:" not in capsys.readouterr().err
