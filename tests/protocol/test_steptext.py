"""Step strings mean exactly the structured step they abbreviate."""

from __future__ import annotations

import pytest
from pydantic_core import PydanticCustomError

from cyclerctl.protocol import parse_step_text
from cyclerctl.protocol import schema as s


def test_rest_for_a_time() -> None:
    step = parse_step_text("Rest for 6 hours")
    assert isinstance(step, s.RestStep)
    assert step.rest.for_ == "6 hours" and step.rest.until is None


def test_rest_until_relaxed() -> None:
    step = parse_step_text("Rest for 1 h or until dV/dt < 1 mV/h")
    assert step.rest.for_ == "1 h"
    assert [e.when for e in step.rest.until] == ["dV/dt < 1 mV/h"]


def test_discharge_sign_comes_from_the_verb() -> None:
    a = parse_step_text("Discharge at 30 mA/g until 0.001 V")
    b = parse_step_text("discharge at -30 mA/g until 0.001 V")
    assert isinstance(a, s.DischargeStep) and isinstance(b, s.DischargeStep)
    assert a.discharge.current == b.discharge.current == "30 mA/g"
    assert a.discharge.until[0].when == "0.001 V"


def test_charge_for_a_time_or_until_a_voltage() -> None:
    step = parse_step_text("Charge at C/10 for 10 hours or until 2.5 V")
    assert isinstance(step, s.ChargeStep)
    assert step.charge.current == "C/10"
    assert step.charge.for_ == "10 hours"
    assert [e.when for e in step.charge.until] == ["2.5 V"]


def test_several_conditions_joined_with_or() -> None:
    step = parse_step_text("Discharge at 0.5 mA until 150 mAh/g or 0 V")
    assert [e.when for e in step.discharge.until] == ["150 mAh/g", "0 V"]


def test_hold_until_a_current() -> None:
    step = parse_step_text("Hold at 2.5 V until 5 mA/g")
    assert isinstance(step, s.HoldStep)
    assert step.hold.voltage == "2.5 V" and step.hold.until[0].when == "5 mA/g"


def test_cc_then_hold_is_a_cccv_step() -> None:
    step = parse_step_text("Charge at 0.1C until 2.5 V then hold until C/50")
    assert isinstance(step, s.CCCVStep)
    assert (step.cccv.current, step.cccv.voltage, step.cccv.until[0].when) == ("0.1C", "2.5 V", "C/50")
    down = parse_step_text("Discharge at 0.1C until 0.01 V, then hold at 0.01 V until C/20")
    assert down.cccv.current == "-0.1C"


@pytest.mark.parametrize("text", ["Rest", "Discharge quickly", "Hold 2 V", "Fly to the moon", "",
                                  "Charge at 1 A until 2 V then hold at 3 V until C/50"])
def test_unreadable_strings_are_refused(text: str) -> None:
    with pytest.raises(PydanticCustomError):
        parse_step_text(text)


def test_pybamm_period_sets_the_record_interval() -> None:
    step = parse_step_text("Discharge at 1 mA until 0 V (10 second period)")
    assert isinstance(step, s.DischargeStep) and step.record.every == "10 second"
    assert step.discharge.until[0].when == "0 V"
