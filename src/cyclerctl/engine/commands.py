"""CLI commands of the engine: demo, run, resume, export. (placeholder until the engine lands)"""

from ..errors import CyclerError


def demo() -> None:
    """The main job: a hard-carbon characterization on the simulated cycler with live progress.

    Example: cyclerctl demo"""
    raise CyclerError("demo is not available yet")


def run() -> None:
    """Run a protocol on a cell. Example: cyclerctl run protocols/hc_formation.yaml --instrument sim:hard_carbon"""
    raise CyclerError("run is not available yet")


def resume() -> None:
    """Continue a run after a crash or power loss. Example: cyclerctl resume runs/2026-11-22_hc"""
    raise CyclerError("resume is not available yet")


def export() -> None:
    """Export a run's journal to BDF Parquet/CSV. Example: cyclerctl export runs/X --format bdf-parquet"""
    raise CyclerError("export is not available yet")
