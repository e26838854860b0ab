"""PalmSens EmStat4 / Nexus over MethodSCRIPT (pyserial): a script-running cycler channel.

Each primitive step is compiled into one script (cyclerctl.drivers.methodscript) with its limits on the
instrument (`breakloop` on a voltage limit or on the current tail of a CV hold, the loop run time for a
step duration); the instrument samples every `interval` seconds and the host applies the record rule,
evaluates every end on the packets and aborts the script (`Z`) for ends the instrument does not check
itself. `cell_off` in `on_finished:` releases the cell on normal end and on abort.

Transport: a serial port (`/dev/ttyACM0`, 921600 Bd, USB-CDC) or `tcp://host:port` (raw socket). On
(re)connect the driver aborts and syncs (`\\n`, `Z`, drain). A link that stalls or garbles is a
transient error: the driver reconnects, resyncs and continues the step from its last packet (the
remaining run time and the charge passed are carried over), a bounded number of times.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from ..channel import Block, Capabilities, StepStart
from ..clock import Clock
from ..errors import ConfigError, InstrumentError
from ..program import Cell, Impedance, SetTemperature, Step, Sweep
from .envelope import check_speed, load_envelope, simulated
from .methodscript import STATUS_OVERLOAD, PacketError, compile_step, decode_packet, is_error
from .stepping import BlockBuilder, EndWatch, Recorder, block_span

log = logging.getLogger(__name__)

_SIM_SPEED = re.compile(r"cyclerctl-sim speed=(\S+)")
_ENVELOPES = {"es4_hr": "emstat4_hr", "es4_lr": "emstat4_hr", "mes4hr": "emstat4_hr", "mes4lr": "emstat4_hr",
              "nexus1": "nexus"}


class MethodScriptPort:
    """Line I/O with a MethodSCRIPT device (blocking; used from worker threads)."""

    def __init__(self, url: str, baudrate: int = 921600) -> None:
        self.url = url
        self.baudrate = baudrate
        self._ser: Any = None
        self._buffer = bytearray()
        self.last_command = ""

    def open(self) -> None:
        import serial

        self.close()
        try:
            self._ser = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.05,
                                              write_timeout=2.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise InstrumentError(f"cannot open the port ({str(exc).splitlines()[0]}); check the cable and "
                                  "that no other program uses it", self.url, transient=True) from exc
        self._buffer.clear()

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - closing a broken port is best effort
                pass

    def reopen(self) -> None:
        self.close()
        self.open()

    def write(self, text: str) -> None:
        self.last_command = text.splitlines()[0] if text.strip() else repr(text)
        if self._ser is None:
            self.open()
        try:
            self._ser.write(text.encode("ascii"))
            self._ser.flush()
        except Exception as exc:  # serial.SerialException, OSError
            self.close()
            raise InstrumentError(f"write failed ({exc})", self.url, self.last_command, transient=True) from exc

    def read_lines(self, wait: float) -> list[str] | None:
        """The complete lines received, waiting up to `wait` s (wall) for the first; None on silence."""
        if self._ser is None:
            self.open()
        polls = max(1, int(wait / 0.05))
        for _ in range(polls):
            lines = self._take()
            if lines:
                return lines
            try:
                chunk = self._read_available()
            except Exception as exc:
                self.close()
                raise InstrumentError(f"read failed ({exc})", self.url, self.last_command, transient=True) from exc
            self._buffer.extend(chunk)
        return self._take() or None

    def _read_available(self) -> bytes:
        """Wait up to the port timeout for a byte, then take everything already received."""
        ser = self._ser
        first = ser.read(1)
        if not first:
            return b""
        if hasattr(ser, "_socket"):  # socket://: in_waiting only says "readable"; read without blocking
            ser.timeout = 0
            try:
                return first + ser.read(65536)
            finally:
                ser.timeout = 0.05
        return first + ser.read(ser.in_waiting)

    def _take(self) -> list[str]:
        lines = []
        while (i := self._buffer.find(b"\n")) >= 0:
            lines.append(bytes(self._buffer[:i]).decode("ascii", "replace").rstrip("\r"))
            del self._buffer[:i + 1]
        return lines

    def drain(self, until_blank: bool = True, wait: float = 1.0) -> list[str]:
        """Read until a blank line (end of script output), a `Z!` reply or `wait` s of silence."""
        out: list[str] = []
        while True:
            lines = self.read_lines(wait)
            if lines is None:
                return out
            out += lines
            if any(x == "" for x in lines) and until_blank or any(x.startswith("Z!") for x in lines):
                return out

    def abort_and_sync(self) -> None:
        """Stop any running script and read away what it still sends."""
        self.write("\n")
        self.write("Z\n")
        self.drain(wait=3.0)  # a running script ends with its on_finished: block and a blank line
        self._buffer.clear()
        if self._ser is not None:
            self._ser.reset_input_buffer()


class EmStatChannel:
    """A cell on a PalmSens EmStat4 / Nexus: a Channel (see cyclerctl.channel)."""

    def __init__(self, port: str, clock: Clock, cell: Cell | None = None, *, baudrate: int = 921600,
                 interval: float = 1.0, sweep_step: float = 1e-3, voltage_range: float = 4.0,
                 line_timeout: float = 3.0, retries: int = 3, stuck_packets: int = 5,
                 name: str | None = None) -> None:
        url = f"socket://{port[6:]}" if port.startswith("tcp://") else port
        self.port = MethodScriptPort(url, baudrate)
        self.name = name or f"emstat:{port}"
        self.clock = clock
        self.cell = cell
        self.interval = interval
        self.sweep_step = sweep_step
        self.voltage_range = voltage_range
        self.line_timeout = line_timeout
        self.retries = retries
        self.stuck_packets = stuck_packets
        self.capabilities: Capabilities = load_envelope("emstat4_hr")
        self.device = ""
        self.instrument_speed: float | None = None
        self.scripts: list[str] = []  # scripts sent (for logs and tests)

    # ---- Channel --------------------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        try:
            check_speed(self.name, self.instrument_speed, self.clock.speed)
        except ConfigError:
            await self.close()
            raise
        if self.instrument_speed is not None:
            self.capabilities = simulated(self.capabilities)

    def identify(self) -> None:
        """Ask the device who it is (blocking, once, before the run): a simulated instrument
        advertises its --speed, and the capabilities then say real_hardware=False."""
        self._open()
        if self.instrument_speed is not None and self.capabilities.real_hardware:
            self.capabilities = simulated(self.capabilities)

    def _open(self) -> None:
        port = self.port
        port.open()
        port.abort_and_sync()
        port.write("t\n")
        lines: list[str] = []
        while not any(x.endswith("*") for x in lines):
            got = port.read_lines(1.0)
            if got is None:
                break
            lines += got
        first = next((x for x in lines if x.startswith("t")), None)
        if first is None:
            raise InstrumentError(f"no MethodSCRIPT device answers (got {lines[:2]!r}); check the port and baud rate",
                                  port.url, "t")
        self.device = first[1:7]
        if self.device == "espico":
            raise InstrumentError("an EmStat Pico has no galvanostat; use an EmStat4 or Nexus for cycling", port.url, "t")
        self.capabilities = load_envelope(_ENVELOPES.get(self.device, "emstat4_hr"))
        m = _SIM_SPEED.search(first)
        self.instrument_speed = (math.inf if m.group(1) == "max" else float(m.group(1))) if m else None

    def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        return self._run(step, start)

    async def safe_state(self) -> None:
        try:
            await asyncio.to_thread(self.port.abort_and_sync)
        except InstrumentError as exc:
            try:
                await asyncio.to_thread(self.port.reopen)
                await asyncio.to_thread(self.port.abort_and_sync)
            except InstrumentError:
                log.error("could not put %s in its safe state: %s", self.name, exc)

    async def close(self) -> None:
        await self.safe_state()
        await asyncio.to_thread(self.port.close)

    def save_state(self) -> bytes | None:
        return None

    def load_state(self, state: bytes) -> None:
        return None

    # ---- a step, with recovery --------------------------------------------------------------------

    async def _run(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        if isinstance(step, SetTemperature):
            raise InstrumentError(f"an EmStat cannot set a temperature ({step.name!r}); attach a chamber",
                                  self.port.url)
        state = _Progress(step, start, self.clock)
        failures = 0
        delay = 0.2
        while True:
            try:
                async for block in self._script(step, state):
                    yield block
                return
            except InstrumentError as exc:
                if not exc.transient or failures >= self.retries:
                    await self.safe_state()
                    if exc.transient:
                        raise InstrumentError(f"{exc.message} (gave up after {failures + 1} attempts)",
                                              exc.resource, exc.last_command) from exc
                    raise
                failures += 1
                log.warning("%s; reconnecting and continuing the step (retry %d of %d)", exc, failures, self.retries)
                await self.clock.sleep(delay)
                delay *= 2
                try:
                    await asyncio.to_thread(self.port.reopen)
                    await asyncio.to_thread(self.port.abort_and_sync)
                except InstrumentError as again:
                    log.warning("recovery failed: %s", again)
                state.resume()

    def _gap(self, step: Step) -> float:
        """The longest expected silence between two packets, in instrument seconds."""
        if isinstance(step, Impedance):
            return max(0.1, 3.0 / min(step.freq_start, step.freq_stop)) + 1.0
        if isinstance(step, Sweep):
            return self.sweep_step / step.scan_rate + 1.0
        return self.interval + 1.0

    async def _script(self, step: Step, state: _Progress) -> AsyncIterator[Block]:
        compiled = compile_step(step, interval=self.interval, step_time=state.step_time,
                                voltage_range=self.voltage_range, sweep_step=self.sweep_step)
        text = "\n".join(compiled.lines)
        self.scripts.append(text)
        await asyncio.to_thread(self.port.write, "e\n" + text + "\n\n")
        state.script_started()
        wait = max(self.line_timeout, 2 * self._gap(step) / self.clock.speed)
        running = True
        while running:
            lines = await asyncio.to_thread(self.port.read_lines, wait)
            if lines is None:
                raise InstrumentError(f"no data for {wait:.3g} s while running a {step.step_type} step",
                                      self.port.url, "e", transient=True)
            for line in lines:
                if line == "":
                    running = False
                    break
                if line.startswith("Z"):
                    continue  # a late reply to a recovery's abort ("Z!0006": nothing was running)
                code = is_error(line)
                if code == "0008":  # busy: an earlier script still runs
                    raise InstrumentError("the instrument is busy with another script", self.port.url, "e",
                                          transient=True)
                if code is not None:
                    raise InstrumentError(f"script error !{code}: {line}", self.port.url, "e")
                if not line.startswith("P"):
                    continue  # e, M####, *, L, +, C####, -, T... text
                end = state.packet(line, compiled.on_instrument)
                if end == "abort":
                    await asyncio.to_thread(self._abort_script)
                    running = False
                    break
                if state.builder.due(state.test_time):
                    yield state.builder.take()
        yield state.finish()

    def _abort_script(self) -> None:
        self.port.write("Z\n")
        self.port.drain(wait=1.0)


class _Progress:
    """What a step has done so far, across scripts (a resumed step continues from here)."""

    def __init__(self, step: Step, start: StepStart, clock: Clock) -> None:
        self.step, self.start, self.clock = step, start, clock
        self.watch = EndWatch(step.ends, start)
        self.recorder = Recorder(step.record)
        columns = ["test_time_second", "step_time_second", "voltage_volt", "current_ampere"]
        if isinstance(step, Impedance):
            columns += ["frequency_hertz", "real_impedance_ohm", "imaginary_impedance_ohm"]
        if isinstance(step, Sweep):
            columns += ["sweep_segment"]
        self.builder = BlockBuilder(block_span(start, clock.speed), tuple(columns))
        self.step_time = start.step_time
        self.test_time = start.test_time
        self.script_step_time0 = start.step_time
        self.script_test_time0 = start.test_time
        self.first_script = True
        self.host_t0 = clock.now()
        self.end: int | None = None
        self.ended = False
        self.last_line: str | None = None
        self.same = 0
        self.garbled = 0
        self.pending: tuple | None = None  # the last unrecorded reading (recorded if it is the last)
        if isinstance(step, Sweep):
            seg = [abs(b - a) / step.scan_rate for a, b in step.segments()]
            self.segment_ends = np.cumsum(seg)
            self.last_segment = max(k for k, d in enumerate(seg) if d > 0) if any(seg) else 0
        self.eis_time0: float | None = None

    def script_started(self) -> None:
        if not self.first_script:
            self.script_test_time0 = self.start.test_time + (self.clock.now() - self.host_t0)
        self.script_step_time0 = self.step_time
        self.first_script = False

    def resume(self) -> None:
        self.watch._last = None  # no charge is integrated across the gap: the cell was off

    def packet(self, line: str, on_instrument: set[int]) -> str | None:
        """Account for one packet; 'abort' when an end the instrument does not check has fired."""
        if self.ended:
            return None
        if line == self.last_line:
            self.same += 1
            if self.same >= 4:
                raise InstrumentError(f"readings stuck: the same packet {len(line)} bytes long came "
                                      f"{self.same + 1} times", "", "e")
            return None
        self.same = 0
        self.last_line = line
        try:
            values = {v.type: v for v in decode_packet(line)}
        except PacketError as exc:
            self.garbled += 1
            log.warning("skipping a garbled packet (%s)", exc)
            if self.garbled >= 3:
                raise InstrumentError(f"garbled data packets ({exc})", "", "e", transient=True) from exc
            return None
        self.garbled = 0
        if any(v.status & STATUS_OVERLOAD for v in values.values()):
            raise InstrumentError("overload: the instrument cannot hold the programmed current or potential "
                                  "(cell disconnected or out of range)", "", "e")
        t_script = values["eb"].value if "eb" in values else 0.0
        v = values.get("ab", values.get("da"))
        voltage = v.value if v is not None else math.nan
        current = values["ba"].value if "ba" in values else 0.0
        self.step_time = self.script_step_time0 + t_script
        self.test_time = self.script_test_time0 + t_script
        row = [self.test_time, self.step_time, voltage, current]
        if isinstance(self.step, Impedance):
            if "dc" not in values:
                return None  # the open-circuit measurement before the sweep
            row += [values["dc"].value, values["cc"].value, values["cd"].value]
            self.builder.add(tuple(row))
            return None
        if isinstance(self.step, Sweep):
            row.append(float(min(np.searchsorted(self.segment_ends, self.step_time - 1e-6),
                                 self.last_segment)))
        end = self.watch.feed(self.step_time, voltage, current)
        if end is not None or self.recorder.wants(self.step_time, voltage, current):
            self.recorder.kept(self.step_time, voltage, current)
            self.watch.recorded(self.step_time, voltage)
            self.builder.add(tuple(row))
            self.pending = None
        else:
            self.pending = tuple(row)
        if end is not None:
            self.end, self.ended = end, True
            return None if end in on_instrument else "abort"
        return None

    def finish(self) -> Block:
        """The final block: the end that fired, or the step's time end if the script ran out, or
        None for a sweep/EIS that completed."""
        if self.pending is not None:
            self.builder.add(self.pending)
            self.pending = None
        end = self.end
        if end is None:
            timed = [k for k, e in enumerate(self.step.ends) if e.quantity == "step_time" and e.op == ">="]
            if timed:
                end = min(timed, key=lambda k: self.step.ends[k].value)
        return self.builder.take(end=end, final=True)


def open_emstat(spec, clock: Clock, cell: Cell | None, **options) -> EmStatChannel:
    """Registry factory: emstat:/dev/ttyACM0 or emstat:tcp://host:port."""
    if not spec.address:
        raise ConfigError("emstat needs a port, e.g. emstat:/dev/ttyACM0 or emstat:tcp://127.0.0.1:4000")
    channel = EmStatChannel(spec.address, clock, cell, **options)
    channel.identify()
    return channel
