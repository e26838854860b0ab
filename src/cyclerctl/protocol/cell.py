"""The cell under test: the protocol's cell block, a --cell file and command-line overrides -> Cell (SI).

Later sources win: protocol cell block < --cell file < flags (--mass, --area, --nominal-capacity).
A --cell file holds the same keys as the cell block (optionally nested under `cell:`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import units
from ..errors import ConfigError, ProtocolError, UnitError
from ..program import Cell
from . import schema
from .loader import _from_validation, raise_all, read_text
from .yamlsafe import load_yaml

# flag spellings accepted in `overrides`
_ALIASES = {"mass": "active_mass", "nominal_capacity": "nominal_specific_capacity"}


class CellValues(dict):
    """The keys of a cell file as written; `where` maps each key to (file, line, column)."""

    where: dict[str, tuple[str, int, int]]


def load_cell(path: str | Path) -> dict[str, Any]:
    """Read a --cell YAML file: the keys of a protocol's cell block, as written (validated)."""
    name = str(path)
    data, locations = load_yaml(read_text(path), name)
    prefix: tuple = ()
    if isinstance(data, dict) and set(data) == {"cell"}:
        data, prefix = data["cell"], ("cell",)
        locations = {k[1:]: v for k, v in locations.items() if k[:1] == prefix}
    if not isinstance(data, dict):
        raise ProtocolError("a cell file is a mapping such as 'active_mass: 3.4 mg'", name, 1, 1)
    try:
        spec = schema.CellSpec.model_validate(data)
    except ValidationError as exc:
        raise_all(_from_validation(exc, locations, name))
        raise
    out = CellValues(spec.model_dump(exclude_none=True))
    out.where = {key: (name, *locations.get((key,), (1, 1))) for key in out}  # for messages later
    return out


_FLAGS = {"active_mass": "--mass", "area": "--area", "nominal_specific_capacity": "--nominal-capacity",
          "particle_radius": "particle_radius"}


def _parse(key: str, value: Any, kind: str, where: tuple | None, ctx: units.Context | None = None) -> float:
    try:
        v = units.parse(value, kind, ctx)
    except UnitError as exc:
        if where is None:
            raise ConfigError(f"{_FLAGS.get(key, key)}: {exc}") from None
        raise ProtocolError(f"cell.{key}: {exc}", *where) from None
    if not v > 0:
        if where is None:
            raise ConfigError(f"{_FLAGS.get(key, key)} must be positive, got {value!r}")
        raise ProtocolError(f"cell.{key} must be positive, got {value!r}", *where)
    return v


def resolve_cell(protocol: schema.Protocol | None, cell_file: str | Path | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> Cell:
    """The Cell a run uses: protocol cell block, then a --cell file (path or load_cell() dict), then
    command-line overrides ({"mass": "3.4 mg", "area": "1.131 cm^2", "nominal_capacity": "300 mAh/g"})."""
    merged: dict[str, Any] = {}
    where: dict[str, tuple | None] = {}
    if protocol is not None and protocol.cell is not None:
        locs = protocol._locations
        for key, value in protocol.cell.model_dump(exclude_none=True).items():
            merged[key] = value
            where[key] = (protocol._file, *locs.get(("cell", key), (1, 1)))
    if cell_file is not None:
        extra = load_cell(cell_file) if not isinstance(cell_file, dict) else cell_file
        places = getattr(extra, "where", {})
        for key, value in extra.items():
            merged[key] = value
            where[key] = places.get(key, (str(cell_file) if not isinstance(cell_file, dict) else "<cell>", 1, 1))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        key = _ALIASES.get(key, key)
        if key not in schema.CellSpec.model_fields:
            raise ConfigError(f"unknown cell setting {key!r}")
        merged[key] = value
        where[key] = None

    mass = _parse("active_mass", merged["active_mass"], "mass", where["active_mass"]) \
        if "active_mass" in merged else None
    area = _parse("area", merged["area"], "area", where["area"]) if "area" in merged else None
    nsc = None
    if "nominal_specific_capacity" in merged:
        value = merged["nominal_specific_capacity"]
        w = where["nominal_specific_capacity"]
        try:
            nsc = _parse("nominal_specific_capacity", value, "specific_capacity", w)
        except (ProtocolError, ConfigError):
            # an absolute nominal capacity (e.g. 1.02 mAh) is divided by the active mass
            try:
                cap = units.parse(value, "capacity", units.Context(active_mass=mass))
            except UnitError:
                raise ProtocolError(
                    f"cell.nominal_specific_capacity: expected a specific capacity such as '300 mAh/g', got {value!r}",
                    *w) if w else ConfigError(
                    f"nominal capacity: expected e.g. '300 mAh/g' or '1.02 mAh', got {value!r}") from None
            if mass is None:
                msg = f"a nominal capacity of {value!r} needs the active mass to give a specific capacity"
                raise (ProtocolError(msg, *w) if w else ConfigError(msg)) from None
            nsc = cap / mass
    kwargs: dict[str, Any] = {}
    if "particle_radius" in merged:
        kwargs["particle_radius"] = _parse("particle_radius", merged["particle_radius"], "length",
                                           where["particle_radius"])
    for key in ("name", "material", "counter_electrode", "kind"):
        if key in merged:
            kwargs[key] = merged[key]
    return Cell(active_mass=mass, area=area, nominal_specific_capacity=nsc, **kwargs)


def context(cell: Cell) -> units.Context:
    """What units.parse needs from a cell."""
    return units.Context(active_mass=cell.active_mass, area=cell.area, nominal_capacity=cell.nominal_capacity)
