"""Keithley 2450 / 2460 / 2461 / 2470 SourceMeter over SCPI (pyvisa): a host-stepped cycler channel.

Steps run as host loops on the channel's clock:
- constant current: current source, voltage limit (VLIM) at the safety window as a hardware backstop;
- constant voltage (CV hold, the CV part of CC-CV): voltage source with current limit (ILIM); while the
  limit clamps, the SMU delivers the limit current, which is the CC phase of a one-setting CC-CV;
- rest: a 0 A current source (high impedance: no current flows; the output relay stays closed so the
  open-circuit voltage is measured without relay wear);
- staircase CV sweep: the host steps the source voltage and reads the current at the end of each stair;
- EIS from the sampled waveform (`acquisition: waveform`, the diffusion region, <= about 1 Hz): the host
  steps the source through a staircase sine and integrates voltage and current over each stair
  (keithley_waveform.py); a spectrum needs a frequency-response analyser and is refused.
The output-off state is HIGH IMPEDANCE (relay open) before the output is ever turned off: the
instrument's default 0 V off-state would short the cell. Every configuration is followed by draining
the error queue. Ends are detected at the first reading past them (one reading period late at most).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator

from ..channel import Block, Capabilities, StepStart
from ..clock import Clock
from ..errors import ConfigError, InstrumentError
from ..program import Cell, ConstantCurrent, ConstantVoltage, Impedance, Rest, SetTemperature, Step, Sweep
from .envelope import check_speed, load_envelope, simulated
from .keithley_waveform import waveform_eis
from .retry import retrying
from .scpi import Control, ScpiInstrument, _bool_reply, in_range
from .stepping import BlockBuilder, EndWatch, Recorder, block_span

log = logging.getLogger(__name__)

_ON_OFF = {True: "ON", False: "OFF"}
_OFF_MODES = {"high_impedance": "HIMP", "normal": "NORM", "zero": "ZERO", "guard": "GUAR"}
_SIM_SPEED = re.compile(r"cyclerctl-sim speed=(\S+)")


class Keithley2450(ScpiInstrument):
    """The 2450's SCPI settings used by a cycler (2450 Reference Manual, section 6)."""

    identity = Control("*IDN?", None, "Maker, model, serial number, firmware.", parse=str)
    language = Control("*LANG?", None, "Command set in use: SCPI, TSP or SCPI2400.", parse=str)
    source_function = Control(":SOUR:FUNC?", ":SOUR:FUNC {}", "What the output sources.",
                              values={"current": "CURR", "voltage": "VOLT"})
    source_current = Control(":SOUR:CURR?", ":SOUR:CURR {:.6e}", "Source current level (A, + = charge).",
                             check=in_range(-1.05, 1.05, "A"))
    source_voltage = Control(":SOUR:VOLT?", ":SOUR:VOLT {:.6e}", "Source voltage level (V).",
                             check=in_range(-210.0, 210.0, "V"))
    voltage_limit = Control(":SOUR:CURR:VLIM?", ":SOUR:CURR:VLIM {:.6e}",
                            "Voltage limit (V, magnitude) of the current source: the hardware backstop.",
                            check=in_range(0.02, 210.0, "V"))
    current_limit = Control(":SOUR:VOLT:ILIM?", ":SOUR:VOLT:ILIM {:.6e}",
                            "Current limit (A, magnitude) of the voltage source.",
                            check=in_range(1e-9, 1.05, "A"))
    voltage_limit_tripped = Control(":SOUR:CURR:VLIM:TRIP?", None,
                                    "True while the current source is clamped by its voltage limit.",
                                    parse=_bool_reply)
    current_limit_tripped = Control(":SOUR:VOLT:ILIM:TRIP?", None,
                                    "True while the voltage source is clamped by its current limit.",
                                    parse=_bool_reply)
    current_range_auto = Control(None, ":SOUR:CURR:RANG:AUTO {}", "Automatic source current range.",
                                 values=_ON_OFF)
    voltage_range_auto = Control(None, ":SOUR:VOLT:RANG:AUTO {}", "Automatic source voltage range.",
                                 values=_ON_OFF)
    current_readback = Control(None, ":SOUR:CURR:READ:BACK {}",
                               "Report the measured, not the programmed, source current.", values=_ON_OFF)
    voltage_readback = Control(None, ":SOUR:VOLT:READ:BACK {}",
                               "Report the measured, not the programmed, source voltage.", values=_ON_OFF)
    sense_function = Control(None, ":SENS:FUNC {}", "What is measured.",
                             values={"voltage": '"VOLT"', "current": '"CURR"'})
    sense_voltage_range_auto = Control(None, ":SENS:VOLT:RANG:AUTO {}", "Automatic voltage measure range.",
                                       values=_ON_OFF)
    sense_current_range_auto = Control(None, ":SENS:CURR:RANG:AUTO {}", "Automatic current measure range.",
                                       values=_ON_OFF)
    voltage_nplc = Control(":SENS:VOLT:NPLC?", ":SENS:VOLT:NPLC {:g}",
                           "Voltage aperture in power-line cycles (sets the reading period).",
                           check=in_range(0.01, 10.0, "PLC"))
    current_nplc = Control(":SENS:CURR:NPLC?", ":SENS:CURR:NPLC {:g}", "Current aperture in power-line cycles.",
                           check=in_range(0.01, 10.0, "PLC"))
    voltage_remote_sense = Control(None, ":SENS:VOLT:RSEN {}", "4-wire (Kelvin) voltage sensing.",
                                   values=_ON_OFF)
    current_remote_sense = Control(None, ":SENS:CURR:RSEN {}", "4-wire sensing while measuring current.",
                                   values=_ON_OFF)
    current_output_off_mode = Control(":OUTP:CURR:SMOD?", ":OUTP:CURR:SMOD {}",
                                      "Output-off state with the current source (HIMP: relay open).",
                                      values=_OFF_MODES)
    voltage_output_off_mode = Control(":OUTP:VOLT:SMOD?", ":OUTP:VOLT:SMOD {}",
                                      "Output-off state with the voltage source (HIMP: relay open).",
                                      values=_OFF_MODES)
    output = Control(":OUTP?", ":OUTP {}", "Output relay on/off.", values=_ON_OFF, parse=_bool_reply)

    current_source_delay_auto = Control(None, ":SOUR:CURR:DEL:AUTO {}",
                                        "Automatic settling delay between a source change and a measurement.",
                                        values=_ON_OFF)
    voltage_source_delay_auto = Control(None, ":SOUR:VOLT:DEL:AUTO {}",
                                        "Automatic settling delay between a source change and a measurement.",
                                        values=_ON_OFF)
    current_source_delay = Control(":SOUR:CURR:DEL?", ":SOUR:CURR:DEL {:.6e}",
                                   "Delay (s) between a source change and the measurement that follows.",
                                   check=in_range(0.0, 1e4, "s"))
    voltage_source_delay = Control(":SOUR:VOLT:DEL?", ":SOUR:VOLT:DEL {:.6e}",
                                   "Delay (s) between a source change and the measurement that follows.",
                                   check=in_range(0.0, 1e4, "s"))

    READ = ':READ? "defbuffer1", READ, SOUR, REL'
    _LEVEL = {"current": (":SOUR:CURR {:.6e}", 1.05), "voltage": (":SOUR:VOLT {:.6e}", 210.0)}

    def clear_status(self) -> None:
        self.write("*CLS")

    def read(self, level: tuple[str, float] | None = None) -> tuple[float, float, float]:
        """One measurement: (measured value, source readback, relative timestamp in s). With `level`
        (function, value) the source is set to value in the same message, so the measurement starts
        as the level changes (no blind time of a separate command in between)."""
        command = self.READ
        if level is not None:
            fmt, hi = self._LEVEL[level[0]]
            in_range(-hi, hi, "A" if level[0] == "current" else "V")(f"source_{level[0]}", level[1])
            command = f"{fmt.format(level[1])};{self.READ}"
        reply = self.ask(command)
        try:
            reading, source, rel = (float(x) for x in reply.split(","))
        except ValueError as exc:
            raise InstrumentError(f"garbled reading {reply[:40]!r}", self.resource_name, self.READ,
                                  transient=True) from exc
        if not all(map(math.isfinite, (reading, source, rel))) or abs(reading) >= 9.9e37:
            raise InstrumentError(f"overflow reading {reply[:40]!r}", self.resource_name, self.READ,
                                  transient=True)
        return reading, source, rel

    def go_safe(self) -> None:
        """Output off with the relay open, whatever the source function."""
        self.current_output_off_mode = "high_impedance"
        self.voltage_output_off_mode = "high_impedance"
        self.output = False
        if self.output:  # read back: the safe state is confirmed, not assumed
            raise InstrumentError("the output did not turn off", self.resource_name, ":OUTP OFF")


class Keithley2450Channel:
    """A cell on a Keithley 2450: a Channel (see cyclerctl.channel)."""

    def __init__(self, resource: str | object, clock: Clock, cell: Cell | None = None, *,
                 backend: str = "@py", timeout: float = 2.0, poll_period: float = 0.1, nplc: float = 1.0,
                 remote_sense: bool = True, sweep_step: float = 1e-3, voltage_limit: float = 5.0,
                 retries: int = 3, stuck_readings: int = 5, envelope: str = "keithley2450",
                 reading_overhead: float = 5e-3, name: str | None = None) -> None:
        self.inst = Keithley2450(resource, backend=backend, timeout=timeout)
        self.name = name or f"keithley2450:{self.inst.resource_name}"
        self.clock = clock
        self.cell = cell
        self.capabilities: Capabilities = load_envelope(envelope)
        self.poll_period = poll_period
        self.nplc = nplc
        self.remote_sense = remote_sense
        self.sweep_step = sweep_step
        self.default_voltage_limit = voltage_limit
        self.retries = retries
        self.stuck_readings = stuck_readings
        self.reading_overhead = reading_overhead  # s of a reading beyond its aperture (trigger, transfer)
        self.instrument_speed: float | None = None  # set by open() for a simulated instrument
        self._mode: str | None = None

    # ---- Channel --------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)
        try:
            check_speed(self.name, self.instrument_speed, self.clock.speed)
        except ConfigError:
            await self.close()
            raise
        if self.instrument_speed is not None and self.capabilities.real_hardware:
            self.capabilities = simulated(self.capabilities)

    def identify(self) -> None:
        """Ask the instrument who it is (blocking, once, before the run): a simulated instrument
        advertises its --speed, and the capabilities then say real_hardware=False."""
        ident = self.inst.identity
        m = _SIM_SPEED.search(ident)
        if m:
            self.instrument_speed = math.inf if m.group(1) == "max" else float(m.group(1))
            self.capabilities = simulated(self.capabilities)

    def _open(self) -> None:
        inst = self.inst
        inst.connect()
        inst.go_safe()  # first of all: the power-on output-off state (NORMAL, 0 V) would load the cell
        ident = inst.identity
        fields = ident.split(",")
        if len(fields) < 2 or not re.search(r"24[5-7]\d", fields[1]):
            raise InstrumentError(f"not a Keithley 2400-family SMU: *IDN? = {ident!r}", inst.resource_name, "*IDN?")
        lang = inst.language.strip().strip('"').upper()
        if lang != "SCPI":
            raise InstrumentError(f"the instrument speaks {lang}; set its command set to SCPI "
                                  "(front panel: Menu > System > Settings > Command Set)", inst.resource_name, "*LANG?")
        m = _SIM_SPEED.search(ident)
        self.instrument_speed = (math.inf if m.group(1) == "max" else float(m.group(1))) if m else None
        inst.clear_status()
        inst.check_errors()
        self._mode = None

    def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        return self._run(step, start)

    async def _run(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        if isinstance(step, SetTemperature):
            raise InstrumentError(f"a Keithley 2450 cannot run {step.step_type} steps ({step.name!r}); "
                                  "attach a chamber", self.inst.resource_name)
        if isinstance(step, Impedance) and step.acquisition != "waveform":
            raise InstrumentError(f"a Keithley 2450 cannot run EIS as a spectrum ({step.name!r}): it has no "
                                  "frequency-response analyser; use 'acquisition: waveform' (up to about 1 Hz) "
                                  "or an EmStat", self.inst.resource_name)
        try:
            if isinstance(step, Impedance):
                async for block in waveform_eis(self, step, start):
                    yield block
            elif isinstance(step, Sweep):
                async for block in self._sweep(step, start):
                    yield block
            else:
                async for block in self._hold(step, start):
                    yield block
        except InstrumentError:
            await self.safe_state()
            raise

    async def safe_state(self) -> None:
        try:
            await asyncio.to_thread(self.inst.go_safe)
        except InstrumentError as exc:
            try:
                await asyncio.to_thread(self.inst.reconnect)
                await asyncio.to_thread(self.inst.go_safe)
            except InstrumentError:
                log.error("could not put %s in its safe state: %s", self.name, exc)
        self._mode = None

    async def close(self) -> None:
        await self.safe_state()
        await asyncio.to_thread(self.inst.close)

    def save_state(self) -> bytes | None:
        return None

    def load_state(self, state: bytes) -> None:
        return None

    # ---- configuration (runs in a worker thread) ------------------------------------------------

    def _voltage_limit(self, step: Step) -> float:
        lim = step.limits
        bound = max(abs(lim.voltage_min), abs(lim.voltage_max))
        if not math.isfinite(bound):
            bound = self.default_voltage_limit
        return min(bound * 1.05 + 0.02, self.capabilities.voltage_range[1])

    def _current_limit(self, step: Step, requested: float = math.inf) -> float:
        return min(requested, step.limits.current_max, self.capabilities.current_max)

    def _source_current(self, current: float, vlim: float) -> None:
        inst = self.inst
        if self._mode != "current":
            inst.source_function = "current"
            inst.current_range_auto = True
            inst.current_readback = True
            inst.sense_function = "voltage"
            inst.sense_voltage_range_auto = True
            inst.voltage_nplc = self.nplc
            inst.voltage_remote_sense = self.remote_sense
            inst.current_output_off_mode = "high_impedance"
        inst.voltage_limit = vlim
        inst.check_errors()
        inst.source_current = current  # the step starts here: the level last, then read at once
        if self._mode != "current":
            inst.output = True
        self._mode = "current"

    def _source_voltage(self, voltage: float, ilim: float) -> None:
        inst = self.inst
        if self._mode != "voltage":
            inst.source_function = "voltage"
            inst.voltage_range_auto = True
            inst.voltage_readback = True
            inst.sense_function = "current"
            inst.sense_current_range_auto = True
            inst.current_nplc = self.nplc
            inst.current_remote_sense = self.remote_sense
            inst.voltage_output_off_mode = "high_impedance"
        inst.current_limit = ilim
        inst.check_errors()
        inst.source_voltage = voltage  # the step starts here: the level last, then read at once
        if self._mode != "voltage":
            inst.output = True
        self._mode = "voltage"

    def _configure(self, step: Step) -> None:
        if isinstance(step, ConstantCurrent):
            self._source_current(step.current, self._voltage_limit(step))
        elif isinstance(step, Rest):
            self._source_current(0.0, self._voltage_limit(step))
        elif isinstance(step, ConstantVoltage):
            self._source_voltage(step.voltage, self._current_limit(step, step.current_limit))
        else:
            raise InstrumentError(f"unsupported step {step.step_type}", self.inst.resource_name)

    async def _call(self, fn, *args):
        async def attempt():
            return await asyncio.to_thread(fn, *args)

        async def recover():  # the instrument keeps its source state across a new connection
            await asyncio.to_thread(self.inst.reconnect)

        return await retrying(attempt, self.clock, retries=self.retries, recover=recover)

    # ---- step loops ---------------------------------------------------------------------------

    def _reading(self, step: Step, raw: tuple[float, float, float]) -> tuple[float, float]:
        """(voltage, current) from a reading in the current source mode."""
        reading, source, _ = raw
        return (reading, source) if self._mode == "current" else (source, reading)

    async def _hold(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        await self._call(self._configure, step)
        set_current = step.current if isinstance(step, ConstantCurrent) else 0.0
        watch = EndWatch(step.ends, start)
        recorder = Recorder(step.record)
        builder = BlockBuilder(block_span(start, self.clock.speed), _COLUMNS)
        rel0: float | None = None
        last_raw, same = None, 0
        next_poll = self.clock.now()
        while True:
            raw = await self._call(self.inst.read)
            same = same + 1 if raw == last_raw else 0
            last_raw = raw
            if same >= self.stuck_readings:
                raise InstrumentError(f"readings stuck at {raw[0]:.6g}, {raw[1]:.6g} (timestamp not advancing "
                                      f"for {same + 1} readings)", self.inst.resource_name, self.inst.READ)
            if rel0 is None:
                rel0 = raw[2]
                await self._call(self.inst.check_errors)  # what the level/output commands left
            step_time = start.step_time + max(0.0, raw[2] - rel0)
            test_time = start.test_time + step_time - start.step_time
            voltage, current = self._reading(step, raw)
            if self._mode == "current" and abs(current - set_current) > 0.01 * abs(set_current) + 1e-8:
                await self._check_compliance(step, voltage, current, set_current)
            end = watch.feed(step_time, voltage, current)
            if end is not None or recorder.wants(step_time, voltage, current):
                recorder.kept(step_time, voltage, current)
                watch.recorded(step_time, voltage)
                builder.add((test_time, step_time, voltage, current))
            if end is not None:
                if self._mode == "current" and set_current != 0:
                    # a cutoff means stop now: 0 A (no current, high impedance) until the next step
                    await self._call(lambda: setattr(self.inst, "source_current", 0.0))
                yield builder.take(end=end, final=True)
                return
            if builder.due(test_time):
                yield builder.take()
            next_poll = max(next_poll + self.poll_period, self.clock.now())
            await self.clock.sleep_until(next_poll)

    async def _check_compliance(self, step: Step, voltage: float, current: float, set_current: float) -> None:
        tripped = await self._call(lambda: self.inst.voltage_limit_tripped)
        if tripped:
            raise InstrumentError(
                f"compliance: the voltage limit {self._voltage_limit(step):.3g} V clamps the source at "
                f"{voltage:.4g} V, {current:.4g} A instead of {set_current:.4g} A (cell disconnected?)",
                self.inst.resource_name, ":SOUR:CURR:VLIM:TRIP?")

    async def _sweep(self, step: Sweep, start: StepStart) -> AsyncIterator[Block]:
        """Staircase voltammetry: stairs of at most `sweep_step` volts, each held for step/scan_rate;
        the current is read at the end of each stair."""
        watch = EndWatch(step.ends, start)
        recorder = Recorder(step.record)
        builder = BlockBuilder(block_span(start, self.clock.speed), _SWEEP_COLUMNS)
        ilim = self._current_limit(step)
        stairs: list[tuple[float, float, int]] = []  # (stair end time in sweep, voltage, segment)
        t = 0.0
        for seg, (a, b) in enumerate(step.segments()):
            if a == b:
                continue  # a zero-length segment (the sweep already ends where it started)
            n = max(1, math.ceil(abs(b - a) / self.sweep_step - 1e-9))
            for k in range(1, n + 1):
                t += abs(b - a) / n / step.scan_rate
                stairs.append((t, a + (b - a) * k / n, seg))
        done = start.step_time
        todo = [s for s in stairs if s[0] > done + 1e-9]
        first_v = todo[0][1] if todo else step.start
        await self._call(self._source_voltage, first_v if done > 0 else step.start, ilim)
        t0 = self.clock.now() - done
        rel0: float | None = None
        for k, (t_end, v, seg) in enumerate(todo):
            if k > 0:
                await self._call(lambda v=v: setattr(self.inst, "source_voltage", v))
            await self.clock.sleep_until(t0 + t_end)
            raw = await self._call(self.inst.read)
            voltage, current = self._reading(step, raw)
            if rel0 is None:
                rel0 = raw[2] - t_end
            step_time = raw[2] - rel0  # the instrument's clock: a host that falls behind shows as such
            test_time = start.test_time + step_time - start.step_time
            end = watch.feed(step_time, voltage, current)
            last = k == len(todo) - 1
            if end is not None or last or recorder.wants(step_time, voltage, current):
                recorder.kept(step_time, voltage, current)
                builder.add((test_time, step_time, voltage, current, float(seg)))
            if end is not None or last:
                yield builder.take(end=end, final=True)
                return
            if builder.due(test_time):
                yield builder.take()
        yield builder.take(final=True)


_COLUMNS = ("test_time_second", "step_time_second", "voltage_volt", "current_ampere")
_SWEEP_COLUMNS = (*_COLUMNS, "sweep_segment")


def open_keithley(spec, clock: Clock, cell: Cell | None, **options) -> Keithley2450Channel:
    """Registry factory: keithley2450:RESOURCE (e.g. TCPIP0::10.0.0.5::5025::SOCKET)."""
    if not spec.address:
        raise ConfigError("keithley2450 needs a VISA resource, e.g. keithley2450:TCPIP0::10.0.0.5::5025::SOCKET")
    channel = Keithley2450Channel(spec.address, clock, cell, **options)
    channel.identify()
    return channel


__all__ = ["Keithley2450", "Keithley2450Channel", "open_keithley"]
