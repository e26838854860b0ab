"""Property: whatever text arrives, the loader and compiler either return a Program or raise a
ProtocolError that says where (line and column) — never any other exception.

5,000 documents in all: mutated shipped protocols (structure and raw text) and random documents built
from the language's own vocabulary. Hypothesis draws a seed per document (derandomized, so every run
feeds the same documents); the document itself is built with random.Random, which keeps the
generation cheap."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from cyclerctl.channel import Capabilities
from cyclerctl.errors import ProtocolError
from cyclerctl.program import Program
from cyclerctl.protocol import compile_protocol, load_text, rows

LIBRARY = sorted((Path(__file__).resolve().parents[2] / "protocols").glob("*.yaml"))
TEXTS = [p.read_text() for p in LIBRARY]
DOCS = [yaml.safe_load(t) for t in TEXTS]
Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

KEYS = ["cyclerctl", "name", "cell", "safety", "record", "steps", "active_mass", "area", "nominal_specific_capacity",
        "voltage", "current", "temperature", "step_duration", "every", "voltage_change", "rest", "ocv", "charge",
        "discharge", "cc", "hold", "cccv", "cv", "eis", "gitt", "ici", "repeat", "for_each", "step", "label",
        "until", "for", "goto", "when", "times", "at_most", "vertices", "rate", "start", "cycles", "from", "to",
        "per_decade", "amplitude", "bias", "mode", "pulse", "interval", "interruption", "set", "within",
        "stable_for", "timeout", "unit", "limits", "cycle_starts_on", "retention_reference_cycle", "hold_for"]
QUANTITIES = ["1e308 kV", "1e300 h", "0 V", "0.001 V", "2.5 V", "-0.05 V", "3.5 V", "30 mA/g", "-30 mA/g", "0.1C", "C/10", "5 mA", "1 A",
              "0 mA", "10 min", "6 h", "-1 h", "150 mAh/g", "1 mV/h", "0.2 mV/s", "100 kHz", "10 mHz", "25 degC",
              "5 K", "99.5 %", "1e400 V", "nan V", "inf s", "5", "-3", "$rate", "${x}", "ocv", "voltage >= 1 V",
              "dV/dt < 1 mV/h", "|I| <= C/50", "coulombic_efficiency >= 99 %", "discharge_capacity < 80 % of cycle 2",
              "Rest for 1 h", "Discharge at 30 mA/g until 0 V", "Hold at 2.5 V until C/50", "end", "", "µA", "5 furlongs"]

def scalar(r: random.Random):
    k = r.randrange(8)
    if k < 3:
        return r.choice(QUANTITIES)
    if k == 3:
        return "".join(chr(r.choice([r.randrange(32, 127), r.randrange(128, 0x2FFF)])) for _ in range(r.randrange(8)))
    if k == 4:
        return r.randint(-10**6, 10**6)
    if k == 5:
        return r.choice([0.0, -1.5, 1e300, float("inf"), float("nan"), r.uniform(-1e3, 1e3)])
    return r.choice([True, False, None])


def value(r: random.Random, depth: int = 0):
    """A random YAML value: scalars, lists and mappings keyed by the language's own words."""
    k = r.randrange(6)
    if depth > 3 or k < 3:
        return scalar(r)
    if k == 3:
        return [value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(KEYS): value(r, depth + 1) for _ in range(r.randrange(5))}


STEP_KINDS = ["rest", "ocv", "charge", "discharge", "cc", "hold", "cccv", "cv", "eis", "gitt", "ici",
              "temperature", "step", "repeat", "for_each"]


STEP_STRINGS = ["Rest for 1 h", "Discharge at 30 mA/g until 0 V", "Charge at C/10 for 10 hours or until 2.5 V",
                "Hold at 2.5 V until C/50", "Charge at 0.1C until 2.5 V then hold until C/50",
                "Discharge at $rate until 0 V", "Rest until dV/dt < 1 mV/h", "Discharge at 10 mA until 0 V",
                "Discharge at 30 mA/g until 150 mAh/g or 0.001 V", "OCV for 10 s", "Jump around",
                "Rest for 2 parsecs", "Charge at 30 mA/g until 2.5 V then hold at 2 V until C/20"]

# kind -> (required settings, optional settings)
SETTINGS = {
    "rest": ([], ["for", "until", "dv_dt_window"]), "ocv": ([], ["for", "until"]),
    "charge": (["current"], ["for", "until"]), "discharge": (["current"], ["for", "until"]),
    "cc": (["current"], ["for", "until"]), "hold": (["voltage"], ["for", "until", "current_limit"]),
    "cccv": (["current", "voltage"], ["until", "hold_for"]), "cv": (["vertices", "rate"], ["start", "cycles"]),
    "eis": (["amplitude", "from", "to"], ["bias", "mode", "per_decade"]),
    "gitt": (["current", "pulse", "rest", "until"], ["at_most"]),
    "ici": (["current", "interval", "interruption", "until"], ["at_most"]),
    "temperature": (["set"], ["within", "stable_for", "timeout"]),
}


def step(r: random.Random, depth: int = 0):
    """A random step: a step string, or a kind with random settings (loops nest)."""
    k = r.randrange(5)
    if k == 0:
        return r.choice(STEP_STRINGS) if r.random() < 0.9 else r.choice(QUANTITIES)
    kind = r.choice(STEP_KINDS) if r.random() < 0.97 else "dance"
    if kind == "step" and r.random() < 0.8:
        return {"step": r.choice(STEP_STRINGS), "label": r.choice(["start", "x", "end"])}
    if kind in ("repeat", "for_each") and depth < 2:
        rule = r.choice([2, "coulombic_efficiency >= 99 %", {"times": 3}, {"until": "cycle_count >= 3", "at_most": 4},
                         {"rate": ["30 mA/g", "60 mA/g"]}, {"x": "[1, 2] V"}, value(r, 2)])
        return {kind: rule, "steps": [step(r, depth + 1) for _ in range(r.randrange(4))]}
    if kind in SETTINGS and r.random() < 0.95:  # mostly well-formed, with random quantities
        required, optional = SETTINGS[kind]
        keys = required + r.sample(optional, r.randrange(len(optional) + 1))
        body = {k: (r.choice(QUANTITIES) if r.random() < 0.95 else scalar(r)) for k in keys}
        if "vertices" in body:
            body["vertices"] = [r.choice(QUANTITIES) for _ in range(r.randrange(4))]
        if "until" in body and r.random() < 0.3:
            body["until"] = [r.choice(QUANTITIES), {"when": r.choice(QUANTITIES), "goto": r.choice(["x", "end", "start"])}]
    else:
        body = {r.choice(KEYS): (scalar(r) if r.random() < 0.7 else value(r, 2)) for _ in range(r.randrange(6))}
    out = {kind: body if r.random() < 0.95 else scalar(r)}
    for key in r.sample(["label", "name", "record", "limits"], r.randrange(3) if r.random() < 0.5 else 0):
        if key == "label":
            out[key] = r.choice(["x", "start", "end", "start", "2bad", 5])
        elif key in ("record", "limits"):
            out[key] = r.choice([{"every": "1 s"}, {"voltage": ["0 V", "1 V"]}, {"current": r.choice(QUANTITIES)},
                                 value(r, 2)])
        else:
            out[key] = r.choice(["named", value(r, 2)])
    return out


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def mutated(r: random.Random) -> str:
    """A shipped protocol with a few values deleted, replaced or added."""
    doc = copy.deepcopy(r.choice(DOCS))
    for _ in range(r.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = r.choice(paths)
        parent = _get(doc, path[:-1])
        op = r.choice(["replace", "delete", "add", "step"])
        if op == "replace":
            parent[path[-1]] = r.choice(QUANTITIES) if r.random() < 0.6 else value(r, 1)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "step" and isinstance(doc, dict) and isinstance(doc.get("steps"), list):
            doc["steps"].insert(r.randrange(len(doc["steps"]) + 1), step(r))
        elif isinstance(parent, dict):
            parent[r.choice(KEYS)] = value(r, 1)
        else:
            parent.insert(path[-1], value(r, 1))
    return yaml.dump(doc, Dumper=Dumper, allow_unicode=True, sort_keys=False)


TEXT_JUNK = list("{}[]:,-&*!|>'\"#% \n\tabcV0123456789.$")


def text_mutated(r: random.Random) -> str:
    """A shipped protocol's raw text with a slice cut out, replaced or duplicated."""
    text = r.choice(TEXTS)
    i = r.randrange(len(text) + 1)
    j = r.randint(i, min(len(text), i + 40))
    op = r.randrange(3)
    if op == 0:
        return text[:i] + text[j:]
    if op == 1:
        return text[:i] + "".join(r.choice(TEXT_JUNK) for _ in range(r.randrange(12))) + text[j:]
    return text[:j] + text[i:j] + text[j:]


def random_document(r: random.Random) -> str:
    """A random protocol-shaped document built from the language's vocabulary."""
    if r.random() < 0.1:
        return yaml.dump(value(r), Dumper=Dumper, allow_unicode=True)
    if r.random() < 0.03:
        return yaml.dump(value(r), Dumper=Dumper, allow_unicode=True)
    doc: dict = {"cyclerctl": 1 if r.random() < 0.95 else r.choice([2, "1", None]),
                 "name": "random" if r.random() < 0.95 else r.choice([5, None, ["x"]])}
    if r.random() < 0.8:
        doc["safety"] = {"voltage": ["-0.05 V", "3 V"], "current": "5 mA"} if r.random() < 0.9 else value(r, 1)
    if r.random() < 0.8:
        doc["cell"] = ({"active_mass": "4.3 mg", "nominal_specific_capacity": "300 mAh/g"} if r.random() < 0.9
                       else value(r, 1))
    if r.random() < 0.3:
        doc[r.choice(KEYS)] = value(r, 1)
    doc["steps"] = [step(r) for _ in range(r.randrange(1, 4))]
    return yaml.dump(doc, Dumper=Dumper, allow_unicode=True, sort_keys=False)


TIGHT = Capabilities(model="tiny", voltage_range=(0.0, 2.0), current_max=2e-4, current_resolution=1e-6,
                     scan_rate_range=(1e-5, 1e-3), frequency_range=(1e-2, 1e4), min_sample_period=1.0,
                     techniques=frozenset({"rest", "current", "voltage", "sweep", "impedance"}))


def check(text: str) -> None:
    note(text)  # shown with the seed if the property fails
    try:
        protocol = load_text(text, "<fuzz>")
        program = compile_protocol(protocol)
        compile_protocol(protocol, capabilities=TIGHT)  # and against a small instrument
        assert len(rows(program)) == len(program.instructions)  # and it can be shown
    except ProtocolError as exc:
        assert exc.file == "<fuzz>"
        assert exc.line is not None and exc.line >= 1, str(exc)
        assert exc.column is not None and exc.column >= 1, str(exc)
        assert "\n" not in str(exc)
        return
    assert isinstance(program, Program)


def fuzz(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@fuzz(2000)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mutated_protocols_fail_only_with_located_protocol_errors(seed: int) -> None:
    check(mutated(random.Random(seed)))


@fuzz(1500)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_text_mutations_fail_only_with_located_protocol_errors(seed: int) -> None:
    check(text_mutated(random.Random(seed)))


@fuzz(1500)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_random_documents_fail_only_with_located_protocol_errors(seed: int) -> None:
    check(random_document(random.Random(seed)))
