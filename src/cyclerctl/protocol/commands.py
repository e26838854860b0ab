"""CLI commands of the protocol language: validate, plan. (placeholder)"""

from ..errors import CyclerError


def validate() -> None:
    """Check protocol files. Example: cyclerctl validate protocols/*.yaml"""
    raise CyclerError("validate is not available yet")


def plan() -> None:
    """Show the compiled program. Example: cyclerctl plan protocols/hc_formation.yaml"""
    raise CyclerError("plan is not available yet")
