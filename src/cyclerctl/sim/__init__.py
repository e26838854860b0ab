"""The simulated cell: one physics model (single-particle half cell) for GCD, CV, GITT, EIS and
temperature, its presets (sim/*.yaml), the SimChannel that runs program steps on it, the synchronous
Plant used by simulated instruments, and the run estimator behind `cyclerctl plan`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .preset import Material, Preset, load_preset, parse_preset

if TYPE_CHECKING:
    from .channel import SimChannel
    from .estimator import estimate
    from .model import CellModel
    from .plant import Plant

__all__ = ["CellModel", "Material", "Plant", "Preset", "SimChannel", "estimate", "load_preset", "parse_preset"]


def __getattr__(name: str):
    # the compiled model is imported on first use, not with the package
    if name == "Plant":
        from .plant import Plant

        return Plant
    if name == "CellModel":
        from .model import CellModel

        return CellModel
    if name == "SimChannel":
        from .channel import SimChannel

        return SimChannel
    if name == "estimate":
        from .estimator import estimate

        return estimate
    raise AttributeError(name)
