"""CLI command: sim-instrument. (placeholder)"""

from ..errors import CyclerError


def sim_instrument() -> None:
    """Start a simulated instrument on a real transport. Example: cyclerctl sim-instrument keithley2450 --port 5025"""
    raise CyclerError("sim-instrument is not available yet")
