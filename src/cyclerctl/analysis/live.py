"""The operators the engine runs on every channel, built from the compiled Program.

Cell data come from `program.cell` (active mass for specific values, nominal capacity for the OCV
slope per unit stoichiometry, particle radius for diffusion coefficients). Everything else has a
default in AnalysisOptions that a caller may override.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..program import Cell, Program
from .arrhenius import ArrheniusOperator
from .base import Operator
from .capacity import CycleOperator
from .cv import CvOperator, CvSettings
from .dqdv import DqdvOperator
from .eis import EisOperator, EisSettings
from .gitt import GittOperator, GittSettings
from .ici import IciOperator, IciSettings


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of the operators that the cell does not give."""

    reference_cycle: int | None = None  # capacity retention baseline (None: the first cycle)
    particle_radius: float | None = None  # m; overrides cell.particle_radius
    dqdv_bin_width: float = 2e-3  # V
    dqdv_fwhm: float = 10e-3  # V
    gitt_t_min: float = 1.0  # s
    ici_window: tuple[float, float] = (1.0, 10.0)  # s


def operators_for(cell: Cell, cycle_starts_on: str = "discharge", options: AnalysisOptions | None = None,
                  reference_cycle: int | None = None) -> list[Operator]:
    """Fresh operators for one channel with this cell."""
    o = options or AnalysisOptions()
    radius = o.particle_radius if o.particle_radius is not None else cell.particle_radius
    ref = o.reference_cycle if o.reference_cycle is not None else reference_cycle
    cycle = CycleOperator(cell.active_mass, cycle_starts_on, ref)
    dqdv = DqdvOperator(cell.active_mass, bin_width=o.dqdv_bin_width, fwhm=o.dqdv_fwhm)
    gitt = GittOperator(GittSettings(particle_radius=radius, nominal_capacity=cell.nominal_capacity,
                                     t_min=o.gitt_t_min))
    ici = IciOperator(IciSettings(particle_radius=radius, t_min=o.ici_window[0], t_max=o.ici_window[1],
                                  nominal_capacity=cell.nominal_capacity))
    area_cm2 = cell.area * 1e4 if cell.area else None
    cv = CvOperator(CvSettings(area_cm2=area_cm2))
    eis = EisOperator(EisSettings(particle_radius=radius, ocv_slope=lambda: gitt.ocv_slope_per_coulomb))
    arrhenius = ArrheniusOperator(eis, gitt.results)
    return [cycle, dqdv, gitt, ici, cv, eis, arrhenius]


def default_operators(program: Program, options: AnalysisOptions | None = None) -> list[Operator]:
    """The engine's operators for `program` (cell from program.cell; CE convention from
    program.cycle_starts_on; retention baseline from program.retention_reference_cycle)."""
    return operators_for(program.cell, program.cycle_starts_on, options, program.retention_reference_cycle)


def cycle_operator(operators: list[Operator]) -> CycleOperator | None:
    """The cycle operator in a list (its current() feeds loop conditions)."""
    return next((op for op in operators if isinstance(op, CycleOperator)), None)
