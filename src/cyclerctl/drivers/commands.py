"""CLI command: sim-instrument — a simulated instrument on a real transport, for bench dry runs and CI."""

from __future__ import annotations

import math
import signal
import threading

import typer

from ..errors import ConfigError

KINDS = ("keithley2450", "emstat", "espec", "meerstetter")


def sim_instrument(
    kind: str = typer.Argument(..., help="keithley2450 (SCPI on TCP), emstat (MethodSCRIPT on a pty or TCP), "
                                         "espec (chamber protocol on TCP) or meerstetter "
                                         "(MeCom TEC stage on a pty or TCP)."),
    port: int = typer.Option(0, "--port", help="TCP port on 127.0.0.1 (0: a free port)."),
    pty: bool = typer.Option(False, "--pty", help="emstat, meerstetter: a pseudo-terminal instead of TCP."),
    speed: str = typer.Option("1", "--speed", help="Time acceleration N (run the host with the same --speed)."),
    preset: str = typer.Option("hard_carbon", "--preset", help="Cell preset of the simulated cell."),
    fault: list[str] = typer.Option([], "--fault", help="Inject a fault: timeout@N, garble@N, disconnect@N "
                                                        "(N-th reading; add + to repeat), compliance@T, "
                                                        "stuck@T (instrument seconds), unstable (espec)."),
    noise: bool = typer.Option(False, "--noise", help="Add measurement noise."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    run_for: float = typer.Option(0.0, "--for", help="Stop after this many wall seconds (0: until Ctrl-C)."),
) -> None:
    """Start a simulated instrument on a real transport. Example: cyclerctl sim-instrument keithley2450 --port 5025"""
    from ..clock import WallClock
    from ..sim.instruments.faults import Faults
    from ..sim.instruments.transport import PtyDevice, TcpServer

    kind = kind.lower()
    if kind not in KINDS:
        raise ConfigError(f"unknown simulated instrument {kind!r}; use one of {', '.join(KINDS)}")
    if pty and kind not in ("emstat", "meerstetter"):
        raise ConfigError("--pty is for emstat and meerstetter (serial devices); keithley2450 and espec listen on TCP")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port (0..65535)")
    try:
        factor = math.inf if speed == "max" else float(speed)
    except ValueError as exc:
        raise ConfigError(f"--speed must be a number > 0, got {speed!r}") from exc
    if not factor > 0 or math.isinf(factor):
        raise ConfigError(f"--speed must be a finite number > 0 for an instrument on a wire, got {speed!r}")
    clock = WallClock(factor)
    faults = Faults.parse(fault)

    def plant():
        from ..sim.plant import Plant

        try:
            cell = Plant(preset, noise=noise, seed=seed)
        except (FileNotFoundError, KeyError) as exc:
            raise ConfigError(f"unknown cell preset {preset!r}") from exc
        warm = Plant(preset)  # compile the model's kernels before anyone connects
        warm.advance_current(-1e-4, 0.5)
        warm.advance_voltage(0.5, 0.5)
        warm.impedance([1.0])
        return cell

    stop = threading.Event()
    if kind == "keithley2450":
        from ..sim.instruments.keithley2450 import SimKeithley2450

        device = SimKeithley2450(plant(), clock, faults)
        transport = _tcp(TcpServer, device.on_line, port)
        spec = f"keithley2450:TCPIP0::127.0.0.1::{transport.port}::SOCKET"
    elif kind == "emstat":
        from ..sim.instruments.emstat import SimEmStat

        device = SimEmStat(plant(), clock, faults)
        if pty:
            transport = PtyDevice(device.on_line).start()
            spec = f"emstat:{transport.path}"
        else:
            transport = _tcp(TcpServer, device.on_line, port)
            spec = f"emstat:tcp://127.0.0.1:{transport.port}"
    elif kind == "meerstetter":
        from ..sim.instruments.meerstetter import SimMeerstetter

        device = SimMeerstetter(clock, None, faults)
        if pty:
            transport = PtyDevice(device.on_line, terminator=b"\r").start()
            spec = f"meerstetter:{transport.path}"
        else:
            transport = _tcp(TcpServer, device.on_line, port, terminator=b"\r")
            spec = f"meerstetter:tcp://127.0.0.1:{transport.port}"
    else:
        from ..sim.instruments.espec import SimEspec

        device = SimEspec(clock, None, faults)
        transport = _tcp(TcpServer, device.on_line, port)
        spec = f"espec:tcp://127.0.0.1:{transport.port}"
    typer.echo(spec, err=False)
    typer.echo(f"simulated {kind} at --speed {speed}{' with faults ' + ', '.join(fault) if fault else ''}; "
               "Ctrl-C stops it", err=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(run_for if run_for > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if hasattr(device, "shutdown"):
            device.shutdown()
        if hasattr(device, "stop") and isinstance(device.stop, threading.Event):
            device.stop.set()
        transport.stop()


def _tcp(server_cls, on_line, port: int, terminator: bytes = b"\n"):
    try:
        return server_cls(on_line, port=port, terminator=terminator).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port") from exc
