"""Report figures of a run: the figure types the run has data for, as PNG and PDF."""

from cyclerctl.cli import main
from cyclerctl.report import make_report


def test_make_report_writes_the_figures_the_run_has_data_for(mixed_run):
    d, _ = mixed_run
    paths = make_report(d)
    names = {p.stem for p in paths}
    assert names == {"voltage_capacity", "capacity_ce", "dqdv", "gitt_diffusion", "nyquist", "cv"}
    for p in paths:
        assert p.parent == d / "report" and p.stat().st_size > 1000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    assert {p.suffix for p in paths} == {".png", ".pdf"}


def test_report_command(mixed_run, tmp_path, capsys):
    d, _ = mixed_run
    assert main(["report", str(d)]) == 0
    assert "figures" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error:")
