"""CLI command: report. (placeholder)"""

from ..errors import CyclerError


def report() -> None:
    """Figures (PNG/PDF) of a run. Example: cyclerctl report runs/X"""
    raise CyclerError("report is not available yet")
