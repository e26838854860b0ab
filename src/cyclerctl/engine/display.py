"""What a person sees while a run goes: a live table (TTY) or plain progress lines (pipes, CI), live
metric lines, and a one-screen summary at the end.

The display only reads the runners' state; it refreshes at most a few times a second from its own
task, so it never slows the run.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..program import LoopEnd, LoopStart, Program
from .session import Session


def expected_steps(program: Program) -> int:
    """Primitive steps the program runs if every loop goes to its count (or at_most)."""
    ins = program.instructions

    def span(a: int, b: int) -> int:
        n, i = 0, a
        while i < b:
            x = ins[i]
            if isinstance(x, LoopStart):
                reps = x.count or x.at_most or 1
                n += reps * span(i + 1, x.end)
                i = x.end + 1
            elif isinstance(x, LoopEnd):
                i += 1
            else:
                n += 1
                i += 1
        return n

    return max(1, span(0, len(ins)))


def fmt_duration(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    if s < 86400 * 2:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    return f"{s / 86400:.1f} d"


def metric_line(ch: str, kind: str, d: dict[str, Any]) -> str | None:
    """One readable line for a metric row (None for rows not worth a line)."""
    def g(key, fmt="{:.4g}"):
        v = d.get(key)
        return None if v is None else fmt.format(v)

    if kind == "cycle":
        parts = [f"cycle {d.get('cycle_count')}"]
        if d.get("specific_discharge_capacity_mah_g") is not None:
            parts.append(f"discharge {g('specific_discharge_capacity_mah_g', '{:.1f}')} mAh/g")
            parts.append(f"charge {g('specific_charge_capacity_mah_g', '{:.1f}')} mAh/g")
        elif d.get("discharge_capacity_ah") is not None:
            parts.append(f"discharge {d['discharge_capacity_ah'] * 1e3:.4g} mAh")
            parts.append(f"charge {(d.get('charge_capacity_ah') or 0) * 1e3:.4g} mAh")
        if d.get("coulombic_efficiency") is not None:
            parts.append(f"CE {d['coulombic_efficiency'] * 100:.2f} %")
        return f"{ch}  " + ", ".join(parts)
    if kind in ("gitt", "ici"):
        dd = d.get("diffusion_coefficient_cm2_s")
        e0 = d.get("e0_volt") or d.get("potential_volt") or d.get("potential_before_volt")
        at = f" at {e0:.3f} V" if isinstance(e0, (int, float)) else ""
        dtext = f"D = {dd:.3g} cm²/s" if dd is not None else "D not estimated"
        flags = d.get("flags") or []
        note = f" [{', '.join(flags)}]" if flags else ""
        return f"{ch}  {kind.upper()} pulse {d.get('pulse_index', '')}{at}: {dtext}{note}"
    if kind == "eis":
        parts = [f"{label} = {d[k]:.4g} {u}" for k, label, u in (
            ("series_resistance_ohm", "R0", "Ω"), ("charge_transfer_resistance_ohm", "Rct", "Ω"),
            ("diffusion_coefficient_cm2_s", "D", "cm²/s")) if d.get(k) is not None]
        model = d.get("best_circuit") or d.get("model") or ""
        source = " (from the waveform)" if d.get("acquisition") == "waveform" else ""
        return f"{ch}  EIS fit{source} {model}: " + (", ".join(parts) or "no fit")
    if kind == "rate":
        cap = d.get("mean_specific_charge_capacity_mah_g")
        ce = d.get("mean_coulombic_efficiency")
        if cap is None or d.get("specific_current_ma_g") is None:
            return None
        return (f"{ch}  rate {d['specific_current_ma_g']:.4g} mA/g (cycles {d.get('first_cycle')}-"
                f"{d.get('last_cycle')}): {cap:.1f} mAh/g" + (f", CE {ce * 100:.2f} %" if ce is not None else ""))
    if kind == "cv":
        return None
    if kind == "arrhenius":
        ea = d.get("activation_energy_kj_mol") or d.get("activation_energy_ev")
        if ea is None and d.get("source") == "gitt":
            ea = d.get("diffusion_activation_energy_kj_mol")
            return f"{ch}  Arrhenius (GITT D): Ea = {ea:.4g}" if ea is not None else None
        return f"{ch}  Arrhenius: Ea = {ea:.4g}" if ea is not None else None
    return None


class Progress:
    """Live table (TTY) or plain lines; metric lines above it; throttled."""

    def __init__(self, session: Session, console: Console | None = None, *, metric_lines: bool = True,
                 interval: float = 0.25, plain_interval: float = 5.0, max_cycle_lines_per_s: float = 4.0) -> None:
        self.s = session
        self.console = console or Console()
        self.tty = self.console.is_terminal
        self.metric_lines = metric_lines
        self.interval = interval
        self.plain_interval = plain_interval
        self.t0 = time.monotonic()
        self.totals = {ch: expected_steps(r.program) for ch, r in session.runners.items()}
        self.start_steps = {ch: r.es.step_count for ch, r in session.runners.items()}
        self.metrics_seen: dict[str, int] = {}
        self._last_line: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._last_states: dict[str, str] = {}
        self.max_cycle_lines = max_cycle_lines_per_s
        session.listeners.append(self._on)

    # ---- metric lines ------------------------------------------------------------------------

    def _on(self, ch: str, kind: str, payload: Any) -> None:
        if kind == "event" and getattr(payload, "kind", None) == "analysis_error":
            d = payload.data
            self.console.print(f"{ch}  analysis: the {d.get('operator')} analysis failed and is switched off "
                               f"({d.get('error')}); the test goes on, every sample is journaled",
                               highlight=False, markup=False)
            return
        if kind != "metric":
            return
        self.metrics_seen[payload.kind] = self.metrics_seen.get(payload.kind, 0) + 1
        if not self.metric_lines:
            return
        if payload.kind in ("cycle", "gitt", "ici", "dqdv"):
            now = time.monotonic()
            if now - self._last_line.get(payload.kind, -1e9) < 1.0 / self.max_cycle_lines:
                self._skipped[payload.kind] = self._skipped.get(payload.kind, 0) + 1
                return
            self._last_line[payload.kind] = now
        line = metric_line(ch, payload.kind, payload.data)
        if line:
            skipped = self._skipped.pop(payload.kind, 0)
            if skipped:
                line += f"   (+{skipped} not shown)"
            self.console.print(line, highlight=False, markup=False)

    # ---- progress ----------------------------------------------------------------------------

    def eta(self, ch: str) -> float:
        r = self.s.runners[ch]
        done = r.es.step_count - self.start_steps[ch]
        total = self.totals[ch] - self.start_steps[ch]
        if r.sm.state.value in ("done", "aborted", "faulted"):
            return 0.0
        if done <= 0 or total <= 0:
            return math.nan
        frac = min(1.0, done / total)
        elapsed = time.monotonic() - self.t0
        return elapsed * (1 - frac) / frac

    def table(self) -> Table:
        t = Table(title=f"{self.s.run_dir}", expand=False)
        for col in ("channel", "state", "cycle", "step", "step #", "test time", "wall", "ETA"):
            t.add_column(col)
        wall = fmt_duration(time.monotonic() - self.t0)
        for ch, r in self.s.runners.items():
            step = r.current_step.name if r.current_step else "—"
            t.add_row(ch, r.sm.state.value, str(r.es.cycle_count), step[:48],
                      f"{r.es.step_count}/{self.totals[ch]}", fmt_duration(r.es.test_time), wall,
                      fmt_duration(self.eta(ch)))
        return t

    def plain_line(self) -> str:
        parts = []
        for ch, r in self.s.runners.items():
            step = r.current_step.name if r.current_step else "—"
            parts.append(f"{ch}: {r.sm.state.value}, cycle {r.es.cycle_count}, step {r.es.step_count}/"
                         f"{self.totals[ch]} ({step}), test time {fmt_duration(r.es.test_time)}, "
                         f"ETA {fmt_duration(self.eta(ch))}")
        return f"[{fmt_duration(time.monotonic() - self.t0)}] " + "; ".join(parts)

    async def run(self, done: asyncio.Event) -> None:
        """Refresh until `done` is set."""
        if self.tty:
            with Live(self.table(), console=self.console, auto_refresh=False, transient=False) as live:
                while not done.is_set():
                    live.update(self.table(), refresh=True)
                    await _wait(done, self.interval)
                live.update(self.table(), refresh=True)
            return
        last = -math.inf
        while not done.is_set():
            now = time.monotonic()
            states = {ch: r.sm.state.value for ch, r in self.s.runners.items()}
            if now - last >= self.plain_interval or states != self._last_states:
                self.console.print(self.plain_line(), highlight=False, markup=False)
                last, self._last_states = now, states
            await _wait(done, self.interval)


async def _wait(ev: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(ev.wait(), seconds)
    except TimeoutError:
        pass


def summary(session: Session, console: Console, wall: float, seen: dict[str, int]) -> None:
    """The one-screen summary: per channel status, cycles, capacities and CE, metrics, files."""
    from ..store import read
    from ..store.journal import connect

    console.rule(f"run {session.status}")
    try:
        conn = connect(session.run_dir, readonly=True)
    except Exception as exc:  # noqa: BLE001
        console.print(f"journal not readable: {exc}")
        return
    try:
        t = Table(expand=False)
        for col in ("channel", "status", "samples", "cycles", "first cycle", "last cycle", "test time"):
            t.add_column(col)
        for ch, r in session.runners.items():
            cycles = read.metrics(conn, ch, "cycle")
            first = _cycle_text(cycles[0]) if cycles else "—"
            last = _cycle_text(cycles[-1]) if cycles else "—"
            status = r.es.status or r.sm.state.value
            t.add_row(ch, status, f"{r.es.seq:,}", str(len(cycles)), first, last, fmt_duration(r.es.test_time))
        console.print(t)
        for ch, r in session.runners.items():
            if r.es.fault:
                console.print(f"{ch} fault: {r.es.fault}", highlight=False, markup=False)
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM metrics GROUP BY kind").fetchall())
    finally:
        conn.close()
    console.print("metrics: " + (", ".join(f"{k} ({n})" for k, n in sorted(kinds.items())) or "none"),
                  highlight=False, markup=False)
    samples = sum(r.es.seq for r in session.runners.values())
    rate = samples / wall if wall > 0 else 0
    console.print(f"wall time {fmt_duration(wall)}, {samples:,} samples ({rate:,.0f}/s)",
                  highlight=False, markup=False)
    if session.mqtt_url:
        console.print(f"MQTT: published to {session.mqtt_url} (node {session.settings.node})",
                      highlight=False, markup=False)
    for note in session.notes:
        console.print(note, highlight=False, markup=False)
    console.print(f"files in {session.run_dir}:", highlight=False, markup=False)
    for p in [Path(session.run_dir) / "run.json", Path(session.run_dir) / "journal.sqlite", *session.exported]:
        console.print(f"  {p}", highlight=False, markup=False)


def _cycle_text(row: dict) -> str:
    ce = row.get("coulombic_efficiency")
    if row.get("specific_charge_capacity_mah_g") is not None:
        cap = f"{row['specific_charge_capacity_mah_g']:.1f} mAh/g"
    elif row.get("charge_capacity_ah") is not None:
        cap = f"{row['charge_capacity_ah'] * 1e3:.4g} mAh"
    else:
        cap = "?"
    return f"#{row.get('cycle_count')}: {cap}" + (f", CE {ce * 100:.2f} %" if ce is not None else "")
