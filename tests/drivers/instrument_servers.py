"""Fixtures of the driver tests: simulated instruments on real transports (TCP on loopback, a
pseudo-terminal), driven by the simulator's cell model, and the drivers connected to them."""

from __future__ import annotations

import contextlib

from cyclerctl.clock import WallClock
from cyclerctl.sim.instruments.emstat import SimEmStat
from cyclerctl.sim.instruments.espec import SimEspec
from cyclerctl.sim.instruments.faults import Faults
from cyclerctl.sim.instruments.keithley2450 import SimKeithley2450
from cyclerctl.sim.instruments.transport import PtyDevice, TcpServer


def make_plant(preset: str = "hard_carbon"):
    from cyclerctl.sim.plant import Plant

    return Plant(preset, noise=False)


@contextlib.contextmanager
def keithley_server(speed: float, faults: tuple[str, ...] = (), plant=None):
    dev = SimKeithley2450(plant or make_plant(), WallClock(speed), Faults.parse(list(faults)))
    server = TcpServer(dev.on_line).start()
    try:
        yield dev, f"TCPIP0::127.0.0.1::{server.port}::SOCKET"
    finally:
        dev.stop.set()
        server.stop()


@contextlib.contextmanager
def emstat_pty(speed: float, faults: tuple[str, ...] = (), plant=None):
    dev = SimEmStat(plant or make_plant(), WallClock(speed), Faults.parse(list(faults)))
    pty = PtyDevice(dev.on_line).start()
    try:
        yield dev, pty.path
    finally:
        dev.shutdown()
        pty.stop()


@contextlib.contextmanager
def emstat_tcp(speed: float, faults: tuple[str, ...] = (), plant=None):
    dev = SimEmStat(plant or make_plant(), WallClock(speed), Faults.parse(list(faults)))
    server = TcpServer(dev.on_line).start()
    try:
        yield dev, f"tcp://127.0.0.1:{server.port}"
    finally:
        dev.shutdown()
        server.stop()


@contextlib.contextmanager
def espec_server(speed: float, faults: tuple[str, ...] = (), plant=None, **kw):
    dev = SimEspec(WallClock(speed), plant, Faults.parse(list(faults)), **kw)
    server = TcpServer(dev.on_line).start()
    try:
        yield dev, f"tcp://127.0.0.1:{server.port}"
    finally:
        server.stop()


@contextlib.contextmanager
def meerstetter_pty(speed: float, faults: tuple[str, ...] = (), plant=None):
    from cyclerctl.sim.instruments.meerstetter import SimMeerstetter

    dev = SimMeerstetter(WallClock(speed), plant, Faults.parse(list(faults)))
    pty = PtyDevice(dev.on_line, terminator=b"\r").start()
    try:
        yield dev, pty.path
    finally:
        pty.stop()
