"""The examples in docs/protocol.md compile: the reference cannot drift from the language."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cyclerctl.protocol import compile_protocol, load_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
HEAD = """cyclerctl: 1
name: doc example
cell: {active_mass: 4.3 mg, area: 1.131 cm^2, nominal_specific_capacity: 300 mAh/g}
safety: {voltage: [-0.05 V, 3.0 V], current: 5 mA, temperature: [-20 degC, 60 degC]}
steps:
  - Rest for 1 s
  - Discharge at 30 mA/g until 0 V
  - Charge at 30 mA/g until 2.5 V
"""
STEP_BLOCKS = [b for b in BLOCKS if b.startswith("  - ") and "[...]" not in b]


def test_the_whole_first_protocol_compiles() -> None:
    full = [b for b in BLOCKS if b.startswith("cyclerctl: 1")]
    assert full
    for block in full:
        assert compile_protocol(load_text(block)).steps()


@pytest.mark.parametrize("block", STEP_BLOCKS, ids=lambda b: b.split("\n")[0].strip()[:40])
def test_step_examples_compile(block: str) -> None:
    program = compile_protocol(load_text(HEAD + block, "doc"))
    assert len(program.steps()) > 3


def test_every_step_kind_has_an_example() -> None:
    text = "\n".join(STEP_BLOCKS)
    for kind in ("rest", "ocv", "charge", "discharge", "cc", "hold", "cccv", "cv", "eis", "gitt", "ici",
                 "temperature", "repeat", "for_each"):
        assert re.search(rf"^  - {kind}:", text, re.M), kind
