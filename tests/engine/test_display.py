"""The run display's lines for what a person must notice: an analysis switched off, an EIS fit."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from cyclerctl.engine.display import Progress, metric_line


def test_an_analysis_error_event_gets_a_line_even_without_metric_lines():
    out = io.StringIO()
    session = SimpleNamespace(runners={}, listeners=[])
    Progress(session, Console(file=out, width=200), metric_lines=False)
    (listener,) = session.listeners
    listener("ch1", "event", SimpleNamespace(kind="step_start", data={}))
    assert out.getvalue() == ""
    listener("ch1", "event", SimpleNamespace(kind="analysis_error", data={
        "operator": "eis", "error": "ZeroDivisionError: complex division by zero"}))
    line = out.getvalue().strip()
    assert line == ("ch1  analysis: the eis analysis failed and is switched off (ZeroDivisionError: complex "
                    "division by zero); the test goes on, every sample is journaled")


def test_eis_line_says_when_the_spectrum_came_from_the_waveform():
    d = {"best_circuit": "R0-p(R1-Sph1,C1)", "series_resistance_ohm": 5.0, "charge_transfer_resistance_ohm": 60.0}
    assert metric_line("ch1", "eis", d) == "ch1  EIS fit R0-p(R1-Sph1,C1): R0 = 5 Ω, Rct = 60 Ω"
    assert metric_line("ch1", "eis", {**d, "acquisition": "waveform"}).startswith("ch1  EIS fit (from the waveform) R0")
