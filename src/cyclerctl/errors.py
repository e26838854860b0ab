"""One exception hierarchy. Every error a person can cause or fix is a CyclerError whose str()
is a single line that says what is wrong and what to do; the CLI prints it and exits non-zero."""

from __future__ import annotations


class CyclerError(Exception):
    """Base of every error cyclerctl reports to a person (never a traceback)."""

    exit_code = 1


class UnitError(CyclerError, ValueError):
    """A quantity has the wrong dimension, no unit, or cannot be parsed ("expected a current, got '5 V'")."""

    exit_code = 2


class ProtocolError(CyclerError):
    """A protocol (or cell, preset, bench) file is invalid. Carries file:line:column."""

    exit_code = 2

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(str(self))

    @property
    def location(self) -> str:
        parts = [self.file or "<protocol>"]
        if self.line is not None:
            parts.append(str(self.line))
            parts.append(str(self.column if self.column is not None else 1))
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class ConfigError(CyclerError):
    """A command-line option, cell file, bench file or preset is wrong."""

    exit_code = 2


class InstrumentError(CyclerError):
    """An instrument failed: timeout, garbled reply, disconnect, error queue entry.

    Names the transport/resource and the last command sent so the user can check cabling/settings.
    `transient` errors may be retried (with bounded backoff) before the channel faults."""

    def __init__(self, message: str, resource: str = "", last_command: str = "",
                 transient: bool = False) -> None:
        self.message = message
        self.resource = resource
        self.last_command = last_command
        self.transient = transient
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" [{self.resource}]" if self.resource else ""
        last = f" (last command: {self.last_command!r})" if self.last_command else ""
        return f"instrument error{where}: {self.message}{last}"


class SafetyTrip(CyclerError):
    """A global or per-step safety limit was crossed; the channel was put in its safe state."""


class JournalError(CyclerError):
    """The run journal cannot be written (disk full, I/O error, locked). The channel goes safe and stops."""


class BrokerError(CyclerError):
    """The MQTT broker cannot be reached or refused us (bad credentials, ACL)."""
