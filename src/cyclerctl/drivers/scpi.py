"""SCPI over pyvisa: a message transport with a lock, mapped errors, and declared instrument properties.

`Control` is a small descriptor in the spirit of pymeasure's `Instrument.control`: one line per
setting of the manual (query, set command, validator, docstring). A driver class is then mostly a
table of its instrument's manual. Every number reaching the wire is formatted by the set command's
format string; nothing from a protocol file is passed through.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError, InstrumentError

log = logging.getLogger(__name__)


def in_range(lo: float, hi: float, unit: str = "") -> Callable[[str, Any], None]:
    """A validator: the value must lie in [lo, hi]."""

    def check(name: str, value: Any) -> None:
        if not lo <= float(value) <= hi:
            raise ConfigError(f"{name} = {value:g} {unit} is outside the instrument's range "
                              f"[{lo:g}, {hi:g}] {unit}".replace("  ", " "))

    return check


def _bool_reply(text: str) -> bool:
    return text.strip().upper() in ("1", "ON", "TRUE")


class Control:
    """One instrument property: `get` query, `set` command (a format string with one field),
    an optional `check(name, value)` validator, an optional `values` map from Python values to
    wire tokens, and `parse` for replies."""

    def __init__(self, get: str | None, set: str | None, doc: str, *,
                 check: Callable[[str, Any], None] | None = None,
                 values: Mapping[Any, str] | None = None,
                 parse: Callable[[str], Any] = float) -> None:
        self.get, self.set, self.check, self.values, self.parse = get, set, check, values, parse
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, inst: Any, owner: type | None = None) -> Any:
        if inst is None:
            return self
        if self.get is None:
            raise AttributeError(f"{self.name} cannot be read from the instrument")
        reply = inst.ask(self.get)
        if self.values is not None:
            reverse = {str(w).strip('"').upper(): k for k, w in self.values.items()}
            key = reply.strip().strip('"').upper()
            if key in reverse:
                return reverse[key]
        try:
            return self.parse(reply)
        except (TypeError, ValueError) as exc:
            raise InstrumentError(f"unreadable reply {reply!r} to {self.get}", inst.resource_name,
                                  self.get, transient=True) from exc

    def __set__(self, inst: Any, value: Any) -> None:
        if self.set is None:
            raise AttributeError(f"{self.name} is read-only")
        if self.values is not None:
            if value not in self.values:
                raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.values))}, got {value!r}")
            wire = self.values[value]
        else:
            if self.check is not None:
                self.check(self.name, value)
            wire = value
        inst.write(self.set.format(wire))


def controls(cls: type) -> dict[str, Control]:
    """The declared properties of an instrument class, in declaration order."""
    out: dict[str, Control] = {}
    for klass in reversed(cls.__mro__):
        out.update({k: v for k, v in vars(klass).items() if isinstance(v, Control)})
    return out


class ScpiInstrument:
    """A message-based instrument behind pyvisa. Thread-safe (one lock per instrument); every
    transport failure becomes an InstrumentError naming the resource and the last command, marked
    transient (the caller may reconnect and retry).

    `resource` is a pyvisa resource name opened with `backend` ("@py" = pyvisa-py: TCP sockets,
    USB-TMC, serial; "file.yaml@sim" = pyvisa-sim), or an already open object with write/query/close
    (the wire-level test helper)."""

    read_termination = "\n"
    write_termination = "\n"

    def __init__(self, resource: Any, *, backend: str = "@py", timeout: float = 2.0) -> None:
        self._lock = threading.RLock()
        self.backend = backend
        self.timeout = timeout
        self.last_command = ""
        self.last_setting = ""  # the last write: what an error-queue entry most likely refers to
        self._rm = None
        if isinstance(resource, str):
            self.resource_name = resource
            self._res = None
        else:
            self.resource_name = getattr(resource, "resource_name", "test")
            self._res = resource

    # ---- transport -------------------------------------------------------------------------

    def connect(self) -> None:
        with self._lock:
            if self._res is not None:
                return
            import pyvisa

            try:
                if self._rm is None:
                    self._rm = pyvisa.ResourceManager(self.backend)
                res = self._rm.open_resource(self.resource_name, read_termination=self.read_termination,
                                             write_termination=self.write_termination)
                res.timeout = int(self.timeout * 1000)
                _no_delay(res)
            except (pyvisa.Error, OSError, ValueError) as exc:
                raise InstrumentError(f"cannot connect ({_first_line(exc)}); check the address and that "
                                      "the instrument is on", self.resource_name, transient=True) from exc
            self._res = res

    def disconnect(self) -> None:
        with self._lock:
            res, self._res = self._res, None
            if res is not None:
                try:
                    res.close()
                except Exception:  # noqa: BLE001 - closing a broken transport is best effort
                    pass

    def reconnect(self) -> None:
        self.disconnect()
        self.connect()

    def close(self) -> None:
        self.disconnect()
        if self._rm is not None:
            try:
                self._rm.close()
            except Exception:  # noqa: BLE001
                pass
            self._rm = None

    def write(self, command: str) -> None:
        with self._lock:
            self.last_command = self.last_setting = command
            self._io(lambda r: r.write(command), command)

    def ask(self, command: str) -> str:
        with self._lock:
            self.last_command = command
            reply = self._io(lambda r: r.query(command), command)
            return str(reply).strip()

    def _io(self, op: Callable[[Any], Any], command: str) -> Any:
        if self._res is None:
            self.connect()
        try:
            return op(self._res)
        except InstrumentError:
            raise
        except Exception as exc:  # pyvisa.VisaIOError, OSError, UnicodeDecodeError, ...
            self.disconnect()
            raise InstrumentError(_first_line(exc), self.resource_name, command, transient=True) from exc

    # ---- SCPI error queue --------------------------------------------------------------------

    def drain_errors(self, limit: int = 32) -> list[tuple[int, str]]:
        """Read :SYST:ERR? until the queue is empty; the (code, message) pairs found."""
        errors: list[tuple[int, str]] = []
        for _ in range(limit):
            reply = self.ask(":SYST:ERR?")
            code_text, _, message = reply.partition(",")
            try:
                code = int(float(code_text))
            except ValueError as exc:
                raise InstrumentError(f"unreadable error queue entry {reply!r}", self.resource_name,
                                      ":SYST:ERR?", transient=True) from exc
            if code == 0:
                return errors
            errors.append((code, message.strip().strip('"')))
        return errors

    def check_errors(self) -> None:
        """Raise an InstrumentError if the instrument reported errors since the last check."""
        errors = self.drain_errors()
        if errors:
            text = "; ".join(f"{c} {m}" for c, m in errors)
            raise InstrumentError(f"instrument reported error {text}", self.resource_name, self.last_setting)


def _no_delay(res: Any) -> None:
    """Send each command at once on a raw TCP socket (no Nagle wait for the previous command's ACK):
    a host-stepped loop lives on round-trip latency."""
    import socket

    try:
        sock = getattr(res.visalib.sessions[res.session], "interface", None)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:  # noqa: BLE001 - an optimisation only; other backends have no socket
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
