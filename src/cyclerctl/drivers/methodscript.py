"""PalmSens MethodSCRIPT: the packet format, script literals, and steps compiled into scripts.

Packets (one line per data point, `P` + `;`-separated variables). A variable is a 2-character type id,
7 hex digits holding a 28-bit value offset by 2^27, and one SI-prefix character; optional metadata
follow as `,1X` (status bit mask: 0x1 timing error, 0x2 overload, 0x4 underload, 0x8 overload warning)
and `,2XX` (range index). Value = (int(hex, 16) - 2^27) x prefix; `     nan` is NaN.

Scripts: each primitive step becomes one script whose on-instrument limits stop the measurement loop
(`breakloop` on a voltage limit, on the current tail of a CV hold) and whose time limit is the loop's
run time; `on_finished:` turns the cell off on normal end and on abort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InstrumentError
from ..program import ConstantCurrent, ConstantVoltage, Impedance, Rest, Step, Sweep

OFFSET = 1 << 27
PREFIXES = {"a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, " ": 1.0,
            "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "i": 1.0}
_ENCODE_ORDER = ["a", "f", "p", "n", "u", "m", " ", "k", "M", "G", "T", "P", "E"]

# variable type ids -> what they carry
VARIABLE_TYPES = {
    "aa": "unknown", "ab": "potential", "ac": "ce_potential", "ae": "re_potential", "ag": "we_ce_potential",
    "ba": "current", "bb": "current_we2", "ca": "phase", "cb": "z_modulus", "cc": "z_real", "cd": "z_imag",
    "da": "applied_potential", "db": "applied_current", "dc": "frequency", "dd": "ac_amplitude",
    "eb": "time", "ed": "temperature", "ee": "count",
}

STATUS_TIMING = 0x1
STATUS_OVERLOAD = 0x2
STATUS_UNDERLOAD = 0x4
STATUS_OVERLOAD_WARNING = 0x8


class PacketError(ValueError):
    """A line that is not a valid data packet."""


@dataclass(frozen=True, slots=True)
class Variable:
    type: str
    value: float
    status: int = 0
    range: int | None = None


def decode_variable(text: str) -> Variable:
    """'ba48D503Dp,10,288' -> Variable('ba', -5.785e-05, 0, 0x88)."""
    base, *meta = text.split(",")
    if len(base) != 10:
        raise PacketError(f"variable {text!r} is not type(2) + value(7) + prefix(1)")
    vtype, digits, prefix = base[:2], base[2:9], base[9]
    if base[2:].strip().lower() == "nan":  # value and prefix fields hold "     nan"
        value = math.nan
    else:
        if prefix not in PREFIXES:
            raise PacketError(f"unknown SI prefix {prefix!r} in {text!r}")
        try:
            value = (int(digits, 16) - OFFSET) * PREFIXES[prefix]
        except ValueError as exc:
            raise PacketError(f"bad hex value in {text!r}") from exc
    status, rng = 0, None
    for m in meta:
        try:
            if m[:1] == "1":
                status = int(m[1:], 16)
            elif m[:1] == "2":
                rng = int(m[1:], 16)
        except ValueError as exc:
            raise PacketError(f"bad metadata {m!r} in {text!r}") from exc
    return Variable(vtype, value, status, rng)


def decode_packet(line: str) -> list[Variable]:
    """A `P...` line -> its variables, in order."""
    if not line.startswith("P"):
        raise PacketError(f"not a data packet: {line[:30]!r}")
    body = line[1:].rstrip("\r\n")
    if not body:
        raise PacketError("empty data packet")
    return [decode_variable(v) for v in body.split(";")]


def encode_variable(vtype: str, value: float, status: int | None = None, rng: int | None = None) -> str:
    """The inverse of decode_variable, with the finest prefix that holds the value in 28 bits."""
    if math.isnan(value):
        body = f"{vtype}     nan"
    else:
        p, raw = "u", 0
        if value != 0:
            for p in _ENCODE_ORDER:
                raw = round(value / PREFIXES[p])
                if abs(raw) < OFFSET:
                    break
            else:
                raise ValueError(f"{value!r} cannot be encoded")
        body = f"{vtype}{raw + OFFSET:07X}{p}"
    if status is not None:
        body += f",1{status:X}"
    if rng is not None:
        body += f",2{rng:02X}"
    return body


def encode_packet(variables: list[tuple[str, float]] | list[Variable]) -> str:
    parts = []
    for v in variables:
        if isinstance(v, Variable):
            parts.append(encode_variable(v.type, v.value, v.status or None, v.range))
        else:
            parts.append(encode_variable(*v))
    return "P" + ";".join(parts)


def literal(value: float, integer: bool = False) -> str:
    """A number as a MethodSCRIPT literal: an integer with the SI prefix that keeps 7 significant
    digits, e.g. 1.02e-3 -> '1020u', -0.05 -> '-50m', 2.5 -> '2500m', 3 (integer) -> '3i'."""
    if integer:
        return f"{int(value)}i"
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if value == 0:
        return "0"
    for p in ["T", "G", "M", "k", " ", "m", "u", "n", "p", "f"]:
        scale = PREFIXES[p]
        raw = round(value / scale)
        if raw != 0 and abs(raw * scale - value) <= 5e-8 * abs(value) and abs(raw) < 2**31:
            return f"{raw}{p.strip()}"
    raw = round(value / 1e-15)
    return f"{raw}f"


def is_error(line: str) -> str | None:
    """The 4-hex-digit error code in a reply line (`!XXXX`), if any."""
    i = line.find("!")
    if i >= 0 and len(line) >= i + 5:
        code = line[i + 1:i + 5]
        if all(c in "0123456789ABCDEFabcdef" for c in code):
            return code.upper()
    return None


# ---- steps -> scripts ---------------------------------------------------------------------------

RUN_FOREVER = 1e7  # s, the run time of a loop ended only by other conditions (then aborted)


@dataclass
class CompiledStep:
    """A step as a script: its lines (no `e`, no trailing blank line), which of the step's ends the
    instrument enforces itself, and the step time at which the script starts."""

    lines: list[str]
    on_instrument: set[int] = field(default_factory=set)
    step_time0: float = 0.0


def _range_for(amps: float) -> str:
    """The smallest of the decade current ranges holding |amps| (at least 1 uA)."""
    r = 1e-6
    while r < abs(amps) * 1.0001 and r < 1.0:
        r *= 10
    return literal(r)


def _packet(names: list[str], indent: str = "\t") -> list[str]:
    return [f"{indent}timer_get t", f"{indent}pck_start", *[f"{indent}pck_add {n}" for n in names],
            f"{indent}pck_end"]


def _voltage_breaks(step: Step, var: str) -> tuple[list[str], set[int]]:
    lines, used = [], set()
    for k, end in enumerate(step.ends):
        if end.quantity == "voltage":
            lines += [f"\tif {var} {end.op} {literal(end.value)}", "\t\tbreakloop", "\tendif"]
            used.add(k)
    return lines, used


def compile_step(step: Step, *, interval: float, step_time: float = 0.0, voltage_range: float = 4.0,
                 sweep_step: float = 1e-3) -> CompiledStep:
    """Compile one primitive step (from `step_time` s into it) into a MethodSCRIPT.

    `interval` is the on-instrument sampling interval (s); the host applies the record rule."""
    duration = min((e.value for e in step.ends if e.quantity == "step_time" and e.op == ">="),
                   default=None)
    run = RUN_FOREVER if duration is None else max(duration - step_time, interval)
    timed = {k for k, e in enumerate(step.ends) if e.quantity == "step_time" and e.op == ">="}
    head = ["var t", "var p", "var c", "var f", "var r", "var j", "set_pgstat_chan 0"]
    vr = literal(voltage_range)
    dt = literal(interval)
    if isinstance(step, ConstantCurrent):
        breaks, used = _voltage_breaks(step, "p")
        body = [
            "set_pgstat_mode 6", f"set_range ab {vr}", f"set_autoranging ab 100m {vr}",
            f"set_range db {_range_for(step.current)}", "set_i 0", "cell_on", "timer_start",
            f"meas_loop_cp p c {literal(step.current)} {dt} {literal(run)}",
            *_packet(["t", "p", "c"]), *breaks, "endloop",
        ]
        return CompiledStep(head + body + ["on_finished:", "cell_off"], used | timed, step_time)
    if isinstance(step, Rest):
        breaks, used = _voltage_breaks(step, "p")
        body = [
            "set_pgstat_mode 2", f"set_range ab {vr}", "cell_off", "timer_start",
            f"meas_loop_ocp p {dt} {literal(run)}", *_packet(["t", "p"]), *breaks, "endloop",
        ]
        return CompiledStep(head + body + ["on_finished:", "cell_off"], used | timed, step_time)
    if isinstance(step, ConstantVoltage):
        used, breaks = set(), []
        for k, end in enumerate(step.ends):
            if end.quantity == "abs_current" and end.op == "<=":
                lim = literal(end.value)
                breaks += [f"\tif c <= {lim}", f"\t\tif c >= -{lim}", "\t\t\tbreakloop", "\t\tendif", "\tendif"]
                used.add(k)
        irange = _range_for(step.current_limit if math.isfinite(step.current_limit) else 0.1)
        body = [
            "set_pgstat_mode 3", f"set_range ba {irange}", f"set_autoranging ba 1u {irange}",
            f"set_e {literal(step.voltage)}", "cell_on", "timer_start",
            f"meas_loop_ca p c {literal(step.voltage)} {dt} {literal(run)}",
            *_packet(["t", "p", "c"]), *breaks, "endloop",
        ]
        return CompiledStep(head + body + ["on_finished:", "cell_off"], used | timed, step_time)
    if isinstance(step, Sweep):
        estep = literal(sweep_step)
        rate = literal(step.scan_rate)
        body = ["set_pgstat_mode 3", "set_range ba 10m", "set_autoranging ba 1u 100m",
                f"set_e {literal(step.start)}", "cell_on", "timer_start"]
        if len(step.vertices) == 2 and step.end_at_start and step_time == 0:
            v1, v2 = step.vertices
            body += [f"meas_loop_cv p c {literal(step.start)} {literal(v1)} {literal(v2)} {estep} {rate} "
                     f"nscans({step.cycles})", *_packet(["t", "p", "c"]), "endloop"]
        else:
            done = step_time
            for a, b in step.segments():
                seg = abs(b - a) / step.scan_rate
                if done >= seg:
                    done -= seg
                    continue
                a = a + (b - a) * done / seg if seg > 0 else a
                done = 0.0
                body += [f"meas_loop_lsv p c {literal(a)} {literal(b)} {estep} {rate}",
                         *_packet(["t", "p", "c"]), "endloop"]
        return CompiledStep(head + body + ["on_finished:", "cell_off"], set(), step_time)
    if isinstance(step, Impedance):
        freqs = step.frequencies()
        n = literal(len(freqs), integer=True)
        fs, fe = literal(freqs[0]), literal(freqs[-1])
        if step.mode == "galvanostatic":  # at the open-circuit potential, measured first
            bias = literal(step.bias or 0.0)
            body = ["set_pgstat_mode 2", f"set_range ab {vr}", "cell_off", "timer_start",
                    "meas_loop_ocp p 100m 1", "endloop",
                    "set_pgstat_mode 6", f"set_range db {_range_for(step.amplitude * 10)}", "set_i 0", "cell_on",
                    f"meas_loop_geis f r j {literal(step.amplitude)} {fs} {fe} {n} {bias}"]
        else:
            if step.bias is None:  # measure the open-circuit potential first and hold the cell there
                ocv = ["cell_off", "timer_start", "meas_loop_ocp p 100m 1", "endloop"]
                bias = "p"
            else:
                ocv = ["timer_start", f"store_var p {literal(step.bias)} ab"]
                bias = literal(step.bias)
            body = ["set_pgstat_mode 3", f"set_range ab {vr}", "set_autoranging ba 1u 10m", *ocv,
                    "set_e p", "cell_on", f"meas_loop_eis f r j {literal(step.amplitude)} {fs} {fe} {n} {bias}"]
        body += [*_packet(["t", "f", "r", "j", "p"]), "endloop"]
        return CompiledStep(head + body + ["on_finished:", "cell_off"], set(), step_time)
    raise InstrumentError(f"MethodSCRIPT cannot run {step.step_type} steps ({step.name!r})")
