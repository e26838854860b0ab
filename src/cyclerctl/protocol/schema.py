"""The protocol language, version 1: what a protocol file may say (pydantic models).

The schema checks structure only. Quantities stay as written ("30 mA/g", "$scan_rate") and are
turned into SI numbers by the compiler, which knows the cell and the for_each variables. Every model
forbids unknown keys so a typo is an error, not a silently ignored setting.

A step is one of:
- a step string, PyBaMM style: "Discharge at 30 mA/g until 0.001 V" (see steptext.py);
- a mapping with exactly one kind key (rest, ocv, charge, discharge, cc, hold, cccv, cv, eis, gitt,
  ici, temperature, step, repeat, for_each) and, beside it, the common keys label, name, record,
  limits (loops also take `steps`).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

VERSION = 1


def _quantity_text(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PydanticCustomError(
            "quantity", "expected a value with a unit such as '30 mA/g' or '2.5 V', got {got}",
            {"got": _describe(value)})
    return value


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return repr(value)


Quantity = Annotated[Any, BeforeValidator(_quantity_text)]
"""A quantity as written: text with a unit, or a bare number (refused later with a clear message)."""


def _positive_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("count", "expected a whole number, got {got}", {"got": _describe(value)})
    if value < 1:
        raise PydanticCustomError("count", "expected a whole number of at least 1, got {got}", {"got": value})
    if value > 10_000_000:
        raise PydanticCustomError("count", "{got} is too large (at most 10,000,000)", {"got": value})
    return value


Count = Annotated[Any, BeforeValidator(_positive_int)]


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=False)


# ---- ends ------------------------------------------------------------------------------------------


class EndSpec(Base):
    """One end condition: `when` ("0.001 V", "2 h", "150 mAh/g", "voltage >= 1 V", "dV/dt < 1 mV/h")
    and where to go when it fires (`goto` a label; default the next step)."""

    when: Quantity
    goto: StrictStr | None = None


def _ends(value: Any) -> Any:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [{"when": v} if not isinstance(v, dict) else v for v in items]


Ends = Annotated[list[EndSpec] | None, BeforeValidator(_ends)]


# ---- cell, limits, record ------------------------------------------------------------------------


class CellSpec(Base):
    """The cell under test. Overridable at run time by a --cell file or --mass/--area flags."""

    name: StrictStr | None = None
    active_mass: Quantity | None = None
    area: Quantity | None = None
    nominal_specific_capacity: Quantity | None = None
    material: StrictStr | None = None
    counter_electrode: StrictStr | None = None
    kind: Literal["anode_half_cell", "cathode_half_cell", "full_cell"] | None = None
    particle_radius: Quantity | None = None  # mean active-particle radius, for diffusion coefficients


class LimitsSpec(Base):
    """Safety limits: a window that is never crossed. A breach is a fault, not a step end."""

    voltage: Annotated[list[Quantity], Field(min_length=2, max_length=2)] | None = None
    current: Quantity | None = None
    temperature: Annotated[list[Quantity], Field(min_length=2, max_length=2)] | None = None
    step_duration: Quantity | None = None


class RecordSpec(Base):
    """Record a sample whenever any criterion is met since the last recorded one."""

    every: Quantity | None = None
    voltage_change: Quantity | None = None
    current_change: Quantity | None = None


class Common(Base):
    """Keys every step may carry beside its kind key."""

    label: StrictStr | None = None
    name: StrictStr | None = None
    record: RecordSpec | None = None
    limits: LimitsSpec | None = None


# ---- technique settings --------------------------------------------------------------------------


class RestSettings(Base):
    for_: Quantity | None = Field(None, alias="for")
    until: Ends = None
    dv_dt_window: Quantity | None = None


class CurrentSettings(Base):
    """Constant current. For charge/discharge the sign comes from the kind; for cc it is as written."""

    current: Quantity
    for_: Quantity | None = Field(None, alias="for")
    until: Ends = None


class HoldSettings(Base):
    voltage: Quantity
    for_: Quantity | None = Field(None, alias="for")
    until: Ends = None
    current_limit: Quantity | None = None


class CCCVSettings(Base):
    """Constant current to `voltage`, then hold there until the current falls to `until`."""

    current: Quantity
    voltage: Quantity
    until: Ends = None
    hold_for: Quantity | None = None


class SweepSettings(Base):
    """Cyclic voltammetry between vertices at a scan rate."""

    start: Quantity | None = None
    vertices: Annotated[list[Quantity], Field(min_length=1, max_length=16)]
    rate: Quantity
    cycles: Count = 1
    end_at_start: StrictBool = True


class EISSettings(Base):
    mode: Literal["potentiostatic", "galvanostatic"] = "potentiostatic"
    bias: Quantity = "ocv"
    amplitude: Quantity
    from_: Quantity = Field(alias="from")
    to: Quantity
    per_decade: Count = 10
    acquisition: Literal["spectrum", "waveform"] = "spectrum"
    samples_per_period: Count | None = None
    periods: Count | None = None


class GITTRest(Base):
    for_: Quantity | None = Field(None, alias="for")
    until: Ends = None
    dv_dt_window: Quantity | None = None


def _gitt_rest(value: Any) -> Any:
    return {"for": value} if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


class GITTSettings(Base):
    """Galvanostatic intermittent titration: pulses of `current` for `pulse`, each followed by a rest,
    until the voltage limit `until` is reached (at most `at_most` pulses)."""

    current: Quantity
    pulse: Quantity
    rest: Annotated[GITTRest, BeforeValidator(_gitt_rest)]
    until: Quantity
    at_most: Count | None = None


class ICISettings(Base):
    """Intermittent current interruption: a constant-current step interrupted for `interruption`
    every `interval`, until the voltage limit `until`."""

    current: Quantity
    interval: Quantity
    interruption: Quantity
    until: Quantity
    at_most: Count | None = None


class TemperatureSettings(Base):
    set: Quantity
    within: Quantity = "0.5 K"
    stable_for: Quantity = "10 min"
    timeout: Quantity = "4 h"


class RepeatSettings(Base):
    times: Count | None = None
    until: StrictStr | None = None
    at_most: Count | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> RepeatSettings:
        if self.times is None and self.until is None:
            raise PydanticCustomError("repeat", "repeat needs 'times: N' or 'until: CONDITION'")
        if self.times is not None and self.until is not None:
            raise PydanticCustomError("repeat", "repeat takes 'times' or 'until', not both")
        return self


def _repeat(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"times": value}
    if isinstance(value, str):
        return {"until": value}
    return value


# ---- steps ---------------------------------------------------------------------------------------


class RestStep(Common):
    rest: RestSettings


class OCVStep(Common):
    ocv: RestSettings


class ChargeStep(Common):
    charge: CurrentSettings


class DischargeStep(Common):
    discharge: CurrentSettings


class CCStep(Common):
    cc: CurrentSettings


class HoldStep(Common):
    hold: HoldSettings


class CCCVStep(Common):
    cccv: CCCVSettings


class SweepStep(Common):
    cv: SweepSettings


class EISStep(Common):
    eis: EISSettings


class GITTStep(Common):
    gitt: GITTSettings


class ICIStep(Common):
    ici: ICISettings


class TemperatureStep(Common):
    temperature: TemperatureSettings


class TextStep(Common):
    """A step string with common keys beside it: {step: "Rest for 6 h", label: start}."""

    step: StrictStr


class RepeatStep(Common):
    repeat: Annotated[RepeatSettings, BeforeValidator(_repeat)]
    steps: Annotated[list[StepItem], Field(min_length=1)]


class ForEachStep(Common):
    """Unrolled: the body is compiled once per value; $name in the body's quantities is replaced."""

    for_each: dict[StrictStr, Any]
    steps: Annotated[list[StepItem], Field(min_length=1)]


KINDS: dict[str, type[Common]] = {
    "rest": RestStep, "ocv": OCVStep, "charge": ChargeStep, "discharge": DischargeStep, "cc": CCStep,
    "hold": HoldStep, "cccv": CCCVStep, "cv": SweepStep, "eis": EISStep, "gitt": GITTStep,
    "ici": ICIStep, "temperature": TemperatureStep, "step": TextStep, "repeat": RepeatStep,
    "for_each": ForEachStep,
}
COMMON_KEYS = ("label", "name", "record", "limits", "steps")


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        kinds = [k for k in value if k in KINDS]
        if len(kinds) == 1:
            return kinds[0]
    return "unknown"


class UnknownStep(BaseModel):
    """Never valid: explains why a step item has no (or more than one) kind."""

    @model_validator(mode="before")
    @classmethod
    def _explain(cls, value: Any) -> Any:
        known = ", ".join(KINDS)
        if isinstance(value, dict):
            kinds = [k for k in value if k in KINDS]
            if len(kinds) > 1:
                raise PydanticCustomError("step_kind", "a step has exactly one kind, this one has {kinds}",
                                          {"kinds": " and ".join(repr(k) for k in kinds)})
            other = [k for k in value if k not in COMMON_KEYS]
            if other:
                hint = difflib.get_close_matches(str(other[0]), list(KINDS), n=1)
                if hint:
                    raise PydanticCustomError("step_kind", "unknown step kind {kind} (did you mean {hint}?)",
                                              {"kind": repr(other[0]), "hint": repr(hint[0])})
                raise PydanticCustomError("step_kind", "unknown step kind {kind} (known: {known})",
                                          {"kind": repr(other[0]), "known": known})
            raise PydanticCustomError("step_kind", "the step has no kind (one of: {known})", {"known": known})
        raise PydanticCustomError("step_kind", "expected a step (a step string or a mapping), got {got}",
                                  {"got": _describe(value)})


def _text_step(value: str) -> Any:
    from .steptext import parse_step_text  # the grammar of step strings

    return parse_step_text(value)


StepItem = Annotated[
    Annotated[StrictStr, AfterValidator(_text_step), Tag("text")]
    | Annotated[RestStep, Tag("rest")]
    | Annotated[OCVStep, Tag("ocv")]
    | Annotated[ChargeStep, Tag("charge")]
    | Annotated[DischargeStep, Tag("discharge")]
    | Annotated[CCStep, Tag("cc")]
    | Annotated[HoldStep, Tag("hold")]
    | Annotated[CCCVStep, Tag("cccv")]
    | Annotated[SweepStep, Tag("cv")]
    | Annotated[EISStep, Tag("eis")]
    | Annotated[GITTStep, Tag("gitt")]
    | Annotated[ICIStep, Tag("ici")]
    | Annotated[TemperatureStep, Tag("temperature")]
    | Annotated[TextStep, Tag("step")]
    | Annotated[RepeatStep, Tag("repeat")]
    | Annotated[ForEachStep, Tag("for_each")]
    | Annotated[UnknownStep, Tag("unknown")],
    Discriminator(_kind_of),
]


class Protocol(Base):
    """A protocol file (version 1)."""

    cyclerctl: Literal[1] = Field(alias="cyclerctl")
    name: StrictStr
    description: StrictStr | None = None
    cell: CellSpec | None = None
    safety: LimitsSpec | None = None
    record: RecordSpec | None = None
    cycle_starts_on: Literal["discharge", "charge"] = "discharge"
    retention_reference_cycle: Count | None = None
    steps: Annotated[list[StepItem], Field(min_length=1)]

    # not part of the file: where it came from (set by the loader)
    _file: str = "<string>"
    _text: str = ""
    _locations: dict = {}


RepeatStep.model_rebuild()
ForEachStep.model_rebuild()
Protocol.model_rebuild()
