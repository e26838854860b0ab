"""Test helpers: run a list of steps on a channel (no engine), and a wire-level protocol checker."""

from __future__ import annotations

import numpy as np

from cyclerctl.channel import Block, StepStart


async def run_steps(channel, steps, max_block_span: float = float("inf")) -> list[dict]:
    """Run `steps` one after another; per step: concatenated columns, the fired end, the blocks."""
    out = []
    t = 0.0
    for step in steps:
        blocks: list[Block] = []
        async for block in channel.run_step(step, StepStart(test_time=t, max_block_span=max_block_span)):
            blocks.append(block)
            if block.final:
                break
        assert blocks and blocks[-1].final, f"step {step.name} produced no final block"
        keys = [k for k in blocks[-1].columns if all(k in b.columns for b in blocks)]
        cols = {k: np.concatenate([b.columns[k] for b in blocks]) for k in keys}
        if len(cols["test_time_second"]):
            t = float(cols["test_time_second"][-1])
        out.append({"columns": cols, "end": blocks[-1].end, "blocks": blocks})
    return out


def step_charge(cols: dict) -> float:
    """|charge| (C) of a step from its recorded samples (trapezoid; exact for constant current)."""
    st = cols.get("step_time_second", cols["test_time_second"])
    i = cols["current_ampere"]
    return float(abs(np.sum(0.5 * (i[1:] + i[:-1]) * np.diff(st)))) if len(i) > 1 else 0.0


def rms_difference(a: dict, b: dict, trim: float = 30.0, lead: float = 10.0) -> float:
    """RMS voltage difference (V) of two runs of one step on a common step-time grid. The first
    `lead` seconds (the ohmic step at switch-on, where "the first sample" means the instant before
    on one instrument and the first reading after on another) and the last `trim` seconds (each
    instrument stops at its own reading) are left out."""
    ta = a.get("step_time_second", a["test_time_second"])
    tb = b.get("step_time_second", b["test_time_second"])
    hi = min(ta[-1], tb[-1]) - trim
    grid = np.linspace(max(ta[0], tb[0]) + lead, hi, 400)
    va = np.interp(grid, ta, a["voltage_volt"])
    vb = np.interp(grid, tb, b["voltage_volt"])
    return float(np.sqrt(np.mean((va - vb) ** 2)))


class ExpectedProtocol:
    """A pyvisa-like resource that checks the exact messages a driver sends, in order
    (pymeasure's `expected_protocol` idea): pairs of (command written, reply or None)."""

    resource_name = "expected-protocol"

    def __init__(self, pairs: list[tuple[str, str | None]]) -> None:
        self.pairs = list(pairs)
        self.k = 0

    def _next(self, sent: str) -> str | None:
        assert self.k < len(self.pairs), f"unexpected extra message {sent!r}"
        want, reply = self.pairs[self.k]
        assert sent == want, f"message {self.k}: sent {sent!r}, expected {want!r}"
        self.k += 1
        return reply

    def write(self, message: str) -> None:
        reply = self._next(message)
        assert reply is None, f"{message!r} is a query in the expected protocol but was written"

    def query(self, message: str) -> str:
        reply = self._next(message)
        assert reply is not None, f"{message!r} expects no reply but was queried"
        return reply

    def close(self) -> None:
        pass

    def done(self) -> bool:
        return self.k == len(self.pairs)
