"""CLI command: analyze. (placeholder)"""

from ..errors import CyclerError


def analyze() -> None:
    """Recompute every metric from a run's journal. Example: cyclerctl analyze runs/X"""
    raise CyclerError("analyze is not available yet")
