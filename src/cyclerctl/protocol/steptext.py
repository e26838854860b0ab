"""Step strings, PyBaMM style, because people know them.

    Rest for 6 hours
    Rest for 1 h or until dV/dt < 1 mV/h
    Discharge at 30 mA/g until 0.001 V
    Charge at C/10 for 10 hours or until 2.5 V
    Discharge at 0.5 mA until 150 mAh/g or 0 V
    Hold at 2.5 V until 5 mA/g
    Charge at 0.1C until 2.5 V then hold until C/50
    Discharge at 1 mA until 0 V (10 second period)      record every 10 s

A string becomes exactly the structured step it abbreviates (rest / charge / discharge / hold /
cccv), so both forms compile the same way. Conditions after "until" are joined with "or".
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

from . import schema

_WS = re.compile(r"\s+")
_FOR_UNTIL = r"(?:\s+for\s+(?P<for>.+?))?(?:\s+(?:or\s+)?until\s+(?P<until>.+?))?"
_REST = re.compile(rf"^(?P<kind>rest|ocv){_FOR_UNTIL}$", re.I)
_CCCV = re.compile(r"^(?P<kind>charge|discharge)\s+at\s+(?P<current>.+?)\s+until\s+(?P<voltage>.+?),?\s+then\s+"
                   r"hold(?:\s+at\s+(?P<hold>.+?))?\s+until\s+(?P<cutoff>.+?)$", re.I)
_CURRENT = re.compile(rf"^(?P<kind>charge|discharge)\s+at\s+(?P<current>.+?){_FOR_UNTIL}$", re.I)
_HOLD = re.compile(rf"^hold\s+at\s+(?P<voltage>.+?){_FOR_UNTIL}$", re.I)
_OR = re.compile(r"\s+or\s+", re.I)
_PERIOD = re.compile(r"\s*\((?P<period>[^()]+?)\s+period\)$", re.I)

EXAMPLES = "'Rest for 6 hours', 'Discharge at 30 mA/g until 0.001 V', 'Hold at 2.5 V until 5 mA/g'"


def _until(text: str | None) -> list[dict] | None:
    if not text:
        return None
    return [{"when": part.strip()} for part in _OR.split(text) if part.strip()]


def _magnitude(text: str) -> str:
    """Charge/discharge set the sign; "Discharge at -30 mA/g" means the same as at 30 mA/g."""
    return text.lstrip("+-").strip()


def parse_step_text(text: str) -> schema.Common:
    """The structured step a step string stands for. Raises PydanticCustomError if it cannot be read."""
    t = _WS.sub(" ", text.strip()).rstrip(".")
    name = t
    m = _PERIOD.search(t)
    if m:  # PyBaMM's "(1 minute period)": record every minute
        t = t[:m.start()].rstrip()
        step = parse_step_text(t)
        return step.model_copy(update={"name": name, "record": schema.RecordSpec(every=m["period"].strip())})
    m = _CCCV.match(t)
    if m:
        sign = "" if m["kind"].lower() == "charge" else "-"
        if m["hold"] and m["hold"].strip() != m["voltage"].strip():
            raise PydanticCustomError(
                "step_text", "in {text} the hold voltage must be the voltage the current step ends at",
                {"text": repr(text)})
        return schema.CCCVStep(name=name, cccv=schema.CCCVSettings(
            current=sign + _magnitude(m["current"]), voltage=m["voltage"].strip(), until=_until(m["cutoff"])))
    m = _REST.match(t)
    if m and (m["for"] or m["until"]):
        settings = schema.RestSettings.model_validate({"for": m["for"], "until": _until(m["until"])})
        if m["kind"].lower() == "ocv":
            return schema.OCVStep(name=name, ocv=settings)
        return schema.RestStep(name=name, rest=settings)
    m = _CURRENT.match(t)
    if m:
        settings = schema.CurrentSettings.model_validate(
            {"current": _magnitude(m["current"]), "for": m["for"], "until": _until(m["until"])})
        if m["kind"].lower() == "charge":
            return schema.ChargeStep(name=name, charge=settings)
        return schema.DischargeStep(name=name, discharge=settings)
    m = _HOLD.match(t)
    if m:
        settings = schema.HoldSettings.model_validate(
            {"voltage": m["voltage"].strip(), "for": m["for"], "until": _until(m["until"])})
        return schema.HoldStep(name=name, hold=settings)
    raise PydanticCustomError("step_text", "cannot read the step {text}; write e.g. {examples}",
                              {"text": repr(text), "examples": EXAMPLES})
