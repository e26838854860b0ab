"""CLI command: monitor. (placeholder)"""

from ..errors import CyclerError


def monitor() -> None:
    """Live terminal view of every channel on a broker. Example: cyclerctl monitor --mqtt mqtt://localhost:1883"""
    raise CyclerError("monitor is not available yet")
