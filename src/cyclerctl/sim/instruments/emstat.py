"""A simulated PalmSens EmStat4 HR speaking MethodSCRIPT on a pseudo-terminal (or TCP), driven by the
cell model.

Online commands: `t` (firmware: `tes4_hr...`, carrying `cyclerctl-sim speed=N`), `v`, `i`, `Z` (abort),
`e` + script + blank line (execute). The interpreter runs a subset of the language: var, store_var,
copy/add/sub/mul/div_var, set_* hardware setup (accepted), cell_on/off, set_e, set_i, timer_start,
timer_get, pck_start/pck_add/pck_end, send_string, loop/endloop, if/elseif/else/endif, breakloop,
on_finished:, and the measurement loops meas_loop_ca, _cp, _ocp, _lsv, _cv (nscans), _eis and _geis.
Output follows the device: `e`, `M####` ... `*` around each measurement loop, `L`/`+` around script
loops, `P` packets, `!XXXX` errors, a blank line at the end. Packets are paced by the instrument clock.
"""

from __future__ import annotations

import math
import re
import threading

import numpy as np

from ...clock import Clock
from ...drivers.methodscript import PREFIXES, STATUS_OVERLOAD, encode_variable
from .base import PlantDriver, block_until
from .faults import Faults
from .transport import Link

_BLOCKS = {"loop": "endloop", "if": "endif"}
_LITERAL = re.compile(r"^([+-]?\d+(?:\.\d+)?)([afpnumkMGTPEi]?)$")
ERR_SYNTAX = "0002"
ERR_UNKNOWN_CMD = "0003"
ERR_NOT_RUNNING = "0006"
ERR_UNKNOWN_VAR = "0012"
ERR_NO_GALVANOSTAT = "0041"


class ScriptError(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class _Break(Exception):
    pass


class _Abort(Exception):
    pass


def parse_literal(token: str) -> float | None:
    m = _LITERAL.match(token)
    if not m:
        return None
    return float(m.group(1)) * PREFIXES[m.group(2) or " "]


def parse_script(lines: list[str]) -> tuple[list, list]:
    """Script lines -> (body, on_finished) as nested [command, args, children, branches]."""
    main: list = []
    finished: list = []
    stack: list[tuple[str, list]] = [("", main)]
    for raw in lines:
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if text == "on_finished:":
            if len(stack) != 1:
                raise ScriptError(ERR_SYNTAX, "on_finished: inside a block")
            stack = [("", finished)]
            continue
        cmd, *args = text.split()
        if cmd in ("endloop", "endif"):
            if len(stack) < 2:
                raise ScriptError(ERR_SYNTAX, f"{cmd} without a block")
            stack.pop()
            continue
        if cmd in ("elseif", "else"):
            node = stack[-2][1][-1] if len(stack) >= 2 else None
            if node is None or node[0] != "if":
                raise ScriptError(ERR_SYNTAX, f"{cmd} outside if")
            branch: list = []
            node[3].append((args, branch))
            stack[-1] = (cmd, branch)
            continue
        node = [cmd, args, [], []]
        stack[-1][1].append(node)
        if cmd.startswith("meas_loop_") or cmd == "loop":
            stack.append((cmd, node[2]))
        elif cmd == "if":
            stack.append((cmd, node[2]))
    if len(stack) != 1:
        raise ScriptError(ERR_SYNTAX, "unterminated loop or if")
    return main, finished


class SimEmStat:
    """The device: online commands and a script runner thread."""

    def __init__(self, plant, clock: Clock, faults: Faults | None = None, serial: str = "ES4HR-SIM-0001",
                 device: str = "es4_hr", voltage_max: float = 6.0, current_max: float = 0.1,
                 noise: float = 0.0, seed: int = 0) -> None:
        self.clock = clock
        self.cell = PlantDriver(plant, clock)
        self.faults = faults or Faults()
        self.serial = serial
        self.device = device
        self.voltage_max = voltage_max
        self.current_max = current_max
        self.stop = threading.Event()
        self._upload: list[str] | None = None
        self._run: threading.Thread | None = None
        self._abort = threading.Event()
        self._done = threading.Event()  # the running script has sent its last line: ready for the next
        self.scripts: list[list[str]] = []  # every script received, for tests
        self.packets = 0
        self.t0 = clock.now()
        self.noise = noise
        self._rng = np.random.default_rng(seed)

    # ---- online commands -------------------------------------------------------------------------

    def on_line(self, line: str, link: Link) -> None:
        if self._upload is not None:
            if line == "":
                script, self._upload = self._upload, None
                self._start(script, link)
            else:
                self._upload.append(line)
            return
        if line == "":
            return
        c = line[0]
        running = self._run is not None and self._run.is_alive() and not self._done.is_set()
        if c == "Z":
            if running:
                link.write(b"Z\n")
                self._abort.set()
            else:
                link.write(f"Z!{ERR_NOT_RUNNING}\n".encode())
            return
        if running:
            link.write(f"{c}!0008\n".encode())  # busy
            return
        if c == "t":
            speed = "max" if math.isinf(self.clock.speed) else f"{self.clock.speed:g}"
            link.write(f"t{self.device}1.6.0 cyclerctl-sim speed={speed}\n#2026-01-01*\n".encode())
        elif c == "v":
            link.write(b"v0106\n")
        elif c == "i":
            link.write(f"i{self.serial}\n".encode())
        elif c == "e":
            self._upload = []
        else:
            link.write(f"{c}!{ERR_UNKNOWN_CMD}\n".encode())

    def _start(self, script: list[str], link: Link) -> None:
        self.scripts.append(script)
        self._abort.clear()
        self._done.clear()
        link.write(b"e\n")
        try:
            body, finished = parse_script(script)
        except ScriptError as exc:
            link.write(f"!{exc.code}: {exc}\n\n".encode())
            return
        self._run = threading.Thread(target=_Runner(self, link, body, finished).run, daemon=True,
                                     name="sim-emstat-script")
        self._run.start()

    def shutdown(self) -> None:
        self.stop.set()
        self._abort.set()
        if self._run is not None:
            self._run.join(timeout=2)


class _Runner:
    """Executes one parsed script."""

    def __init__(self, dev: SimEmStat, link: Link, body: list, finished: list) -> None:
        self.dev, self.link, self.body, self.finished = dev, link, body, finished
        self.vars: dict[str, tuple[float, str]] = {}
        self.cell_on = False
        self.e_set = 0.0
        self.i_set = 0.0
        self.mode = 0
        self.timer0 = dev.clock.now()
        self.packet: list[str] | None = None
        self.output = True
        self.status = 0
        self.last_packet: str | None = None
        self.v = dev.cell.plant.advance_open(0.0)
        self.i = 0.0

    def write(self, text: str) -> None:
        if self.output or not text.startswith("P"):
            self.link.write(text.encode("ascii"))

    def run(self) -> None:
        # the script starts now; within it, time moves only where the script waits (its logical
        # time), so a thread that runs late still applies each setting for the right duration
        self._advance(self.dev.clock.now())
        try:
            self.exec(self.body)
        except _Abort:
            pass
        except ScriptError as exc:
            self.write(f"!{exc.code}: {exc}\n")
        except Exception as exc:  # noqa: BLE001 - a device reports, it does not crash
            self.write(f"!0001: internal error {type(exc).__name__}\n")
        finally:
            try:
                self.exec(self.finished, abortable=False)
            except ScriptError:
                pass
            self.dev._done.set()  # as on the device: once the end is sent, the next command is taken
            self.write("\n")

    # ---- values ----------------------------------------------------------------------------------

    def value(self, token: str) -> float:
        x = parse_literal(token)
        if x is not None:
            return x
        if token in self.vars:
            return self.vars[token][0]
        raise ScriptError(ERR_UNKNOWN_VAR, f"unknown variable or bad value {token!r}")

    def set(self, name: str, value: float, vtype: str) -> None:
        self.vars[name] = (value, vtype)

    def condition(self, args: list[str]) -> bool:
        if len(args) != 3:
            raise ScriptError(ERR_SYNTAX, f"bad condition {' '.join(args)!r}")
        a, op, b = self.value(args[0]), args[1], self.value(args[2])
        ops = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}
        if op not in ops:
            raise ScriptError(ERR_SYNTAX, f"bad operator {op!r}")
        return ops[op]

    # ---- physics ---------------------------------------------------------------------------------

    def _advance(self, until: float | None = None) -> None:
        """Run the cell under the present cell state up to `until`."""
        plant = self.dev.cell.plant
        for dt in self.dev.cell.steps(until):
            t = self.dev.cell.t - self.dev.t0
            if not self.cell_on or self.dev.faults.active("compliance", t):
                self.v, self.i = plant.advance_open(dt), 0.0
                if self.cell_on and self.mode == 6:  # galvanostat into an open cell: rails
                    self.v = math.copysign(self.dev.voltage_max, self.i_set or 1.0)
                    self.status |= STATUS_OVERLOAD
            elif self.mode == 6:
                self.v, self.i = plant.advance_current(self.i_set, dt), self.i_set
                if abs(self.v) > self.dev.voltage_max:
                    self.status |= STATUS_OVERLOAD
            else:
                self.i = plant.advance_voltage(self.e_set, dt)
                self.v = self.e_set
                if abs(self.i) > self.dev.current_max:
                    self.status |= STATUS_OVERLOAD

    def wait(self, t: float) -> None:
        if not block_until(self.dev.clock, t, self.dev.stop):
            raise _Abort
        if self.dev._abort.is_set():
            raise _Abort
        self._advance(t)

    # ---- execution -------------------------------------------------------------------------------

    def exec(self, nodes: list, abortable: bool = True) -> None:
        for cmd, args, children, branches in nodes:
            if abortable and self.dev._abort.is_set():
                raise _Abort
            handler = getattr(self, "do_" + cmd, None)
            if handler is None:
                raise ScriptError(ERR_UNKNOWN_CMD, f"unknown command {cmd!r}")
            handler(args, children, branches)

    def loop_body(self, children: list) -> bool:
        """Run a loop body; False if it broke the loop."""
        try:
            self.exec(children)
        except _Break:
            return False
        return True

    def do_var(self, args, *_):
        self.set(args[0], 0.0, "aa")

    def do_array(self, args, *_):
        self.set(args[0], 0.0, "aa")

    def do_store_var(self, args, *_):
        self.set(args[0], self.value(args[1]), args[2] if len(args) > 2 else "aa")

    def do_copy_var(self, args, *_):
        self.vars[args[1]] = self.vars[args[0]] if args[0] in self.vars else (self.value(args[0]), "aa")

    def _arith(self, args, f):
        v, t = self.vars.get(args[0], (0.0, "aa"))
        self.set(args[0], f(v, self.value(args[1])), t)

    def do_add_var(self, args, *_):
        self._arith(args, lambda a, b: a + b)

    def do_sub_var(self, args, *_):
        self._arith(args, lambda a, b: a - b)

    def do_mul_var(self, args, *_):
        self._arith(args, lambda a, b: a * b)

    def do_div_var(self, args, *_):
        self._arith(args, lambda a, b: a / b if b else math.nan)

    def do_set_pgstat_mode(self, args, *_):
        self.mode = int(self.value(args[0]))
        if self.mode == 6 and not self.dev.device.startswith("es4") and not self.dev.device.startswith("nexus"):
            raise ScriptError(ERR_NO_GALVANOSTAT, "galvanostat not available on this device")

    def _accept(self, args, *_):
        for a in args[1:]:
            if parse_literal(a) is None and a not in self.vars:
                raise ScriptError(ERR_SYNTAX, f"bad value {a!r}")

    do_set_pgstat_chan = do_set_max_bandwidth = do_set_range = do_set_autoranging = _accept
    do_set_range_minmax = do_set_acquisition_frac_autoadjust = do_set_script_output_mode = _accept

    def do_set_script_output(self, args, *_):
        self.output = bool(self.value(args[0]))

    def do_set_e(self, args, *_):
        self.e_set = self.value(args[0])

    def do_set_i(self, args, *_):
        self.i_set = self.value(args[0])

    def do_cell_on(self, args, *_):
        self.cell_on = True

    def do_cell_off(self, args, *_):
        self.cell_on = False

    def do_timer_start(self, args, *_):
        self.timer0 = self.dev.cell.t

    def do_timer_get(self, args, *_):
        # the time of the cell state just measured (a late thread reports when it measured, not now)
        self.set(args[0], self.dev.cell.t - self.timer0, "eb")

    def do_pck_start(self, args, *_):
        self.packet = []

    def do_pck_add(self, args, *_):
        if self.packet is None:
            raise ScriptError(ERR_SYNTAX, "pck_add outside pck_start/pck_end")
        value, vtype = self.vars.get(args[0], (math.nan, "aa"))
        status = self.status if vtype in ("ab", "ba", "da") else None
        self.packet.append(encode_variable(vtype, value, status))

    def do_pck_end(self, args, *_):
        line = "P" + ";".join(self.packet or []) + "\n"
        self.packet = None
        dev = self.dev
        dev.packets += 1
        t = dev.cell.t - dev.t0
        if dev.faults.active("stuck", t):
            self.last_packet = self.last_packet or line
            line = self.last_packet
        fault = dev.faults.on_reading(dev.packets)
        if fault == "timeout":
            while not dev._abort.is_set() and not dev.stop.is_set():
                dev._abort.wait(0.05)  # the device goes silent until aborted
            raise _Abort
        if fault == "garble":
            line = "P#~" + line[3:9] + "\x15;;\n"
        if fault == "disconnect":
            self.link.drop()
            raise _Abort
        self.write(line)

    def do_send_string(self, args, *_):
        self.write("T" + " ".join(args).strip('"') + "\n")

    def do_breakloop(self, args, *_):
        raise _Break

    def do_if(self, args, children, branches):
        if self.condition(args):
            self.exec(children)
            return
        for cond, branch in branches:
            if not cond or self.condition(cond):
                self.exec(branch)
                return

    def do_loop(self, args, children, branches):
        self.write("L\n")
        while self.condition(args):
            if not self.loop_body(children):
                break
        self.write("+\n")

    # ---- measurement loops ----------------------------------------------------------------------

    def _timed(self, children, interval: float, run: float, sample) -> None:
        self.write("M0000\n")
        t_start = self.dev.cell.t
        n = int(math.floor(run / interval + 1e-9))
        for k in range(1, n + 1):
            self.wait(t_start + k * interval)
            sample()
            if not self.loop_body(children):
                break
        self.write("*\n")

    def _noisy(self, v: float) -> float:
        return v + self.dev._rng.normal(0.0, self.dev.noise) if self.dev.noise > 0 else v

    def do_meas_loop_ca(self, args, children, _):
        e_var, i_var = args[0], args[1]
        self.e_set = self.value(args[2])

        def sample():
            self.set(e_var, self.e_set, "da")
            self.set(i_var, self.i, "ba")
        self._timed(children, self.value(args[3]), self.value(args[4]), sample)

    def do_meas_loop_cp(self, args, children, _):
        if self.mode != 6:
            raise ScriptError(ERR_NO_GALVANOSTAT, "meas_loop_cp needs set_pgstat_mode 6")
        e_var, i_var = args[0], args[1]
        self.i_set = self.value(args[2])

        def sample():
            self.set(e_var, self._noisy(self.v), "ab")
            self.set(i_var, self.i, "ba")
        self._timed(children, self.value(args[3]), self.value(args[4]), sample)

    def do_meas_loop_ocp(self, args, children, _):
        e_var = args[0]

        def sample():
            self.set(e_var, self._noisy(self.v), "ab")
        was_on, self.cell_on = self.cell_on, False
        try:
            self._timed(children, self.value(args[1]), self.value(args[2]), sample)
        finally:
            self.cell_on = was_on

    def _staircase(self, children, e_var, i_var, points: list[tuple[float, float]], step_time: float) -> None:
        self.write("M0000\n")
        t_start = self.dev.cell.t
        for k, (e, _) in enumerate(points):
            self.e_set = e
            self.wait(t_start + (k + 1) * step_time)
            self.set(e_var, e, "da")
            self.set(i_var, self.i, "ba")
            if not self.loop_body(children):
                break
        self.write("*\n")

    @staticmethod
    def _ramp(a: float, b: float, estep: float) -> list[float]:
        if a == b:
            return []
        n = max(1, int(math.ceil(abs(b - a) / estep - 1e-9)))
        return [a + (b - a) * k / n for k in range(1, n + 1)]

    def do_meas_loop_lsv(self, args, children, _):
        a, b, estep, rate = (self.value(x) for x in args[2:6])
        pts = [(e, 0.0) for e in self._ramp(a, b, estep)]
        self._staircase(children, args[0], args[1], pts, estep / rate)

    def do_meas_loop_cv(self, args, children, _):
        begin, v1, v2, estep, rate = (self.value(x) for x in args[2:7])
        nscans = 1
        for extra in args[7:]:
            m = re.fullmatch(r"nscans\((\d+)\)", extra)
            if m:
                nscans = int(m.group(1))
        pts: list[float] = []
        for _scan in range(nscans):
            pts += self._ramp(begin, v1, estep) + self._ramp(v1, v2, estep) + self._ramp(v2, begin, estep)
        self._staircase(children, args[0], args[1], [(e, 0.0) for e in pts], estep / rate)

    def _eis(self, args, children, galvanostatic: bool) -> None:
        f_var, zr_var, zi_var = args[0], args[1], args[2]
        f_start, f_end = self.value(args[4]), self.value(args[5])
        n = int(self.value(args[6]))
        bias = self.value(args[7]) if len(args) > 7 else 0.0
        if galvanostatic:
            self.i_set = bias
        else:
            self.e_set = bias
        freqs = np.logspace(math.log10(f_start), math.log10(f_end), n) if n > 1 else np.array([f_start])
        self.write("M0000\n")
        t = self.dev.cell.t
        for f in freqs:
            t += max(0.1, 3.0 / f)  # a few periods per frequency
            self.wait(t)
            z = complex(np.asarray(self.dev.cell.plant.impedance(np.array([f])))[0])
            self.set(f_var, float(f), "dc")
            self.set(zr_var, z.real, "cc")
            self.set(zi_var, z.imag, "cd")
            if not self.loop_body(children):
                break
        self.write("*\n")

    def do_meas_loop_eis(self, args, children, _):
        self._eis(args, children, galvanostatic=False)

    def do_meas_loop_geis(self, args, children, _):
        if self.mode != 6:
            raise ScriptError(ERR_NO_GALVANOSTAT, "meas_loop_geis needs set_pgstat_mode 6")
        self._eis(args, children, galvanostatic=True)
