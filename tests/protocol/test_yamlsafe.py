"""The YAML loader: plain values only, bounded, and every value's position remembered."""

from __future__ import annotations

import pytest

from cyclerctl.errors import ProtocolError
from cyclerctl.protocol import yamlsafe
from cyclerctl.protocol.yamlsafe import load_yaml, locate


def test_positions_of_values_and_keys_are_1_based() -> None:
    data, locs = load_yaml("a: 1\nsteps:\n  - x\n  - {current: 5 mA}\n")
    assert data == {"a": 1, "steps": ["x", {"current": "5 mA"}]}
    assert locs[("a",)] == (1, 4)
    assert locs[("steps", 0)] == (3, 5)
    assert locs[("steps", 1, "current")] == (4, 15)
    assert locate(locs, ("steps", 1, "current"), key=True) == (4, 6)
    # parts not in the file (pydantic union tags) are skipped
    assert locate(locs, ("steps", 1, "cc", "current")) == (4, 15)


def test_scalars_keep_yaml_core_types() -> None:
    data, _ = load_yaml("a: 1\nb: 2.5\nc: true\nd: null\ne: '1'\nf: 2.5 V\n")
    assert data == {"a": 1, "b": 2.5, "c": True, "d": None, "e": "1", "f": "2.5 V"}


def test_merge_keys_expand_and_explicit_keys_win() -> None:
    data, _ = load_yaml("base: &b {current: 1 mA, until: 0 V}\nstep: {<<: *b, current: 2 mA}\n")
    assert data["step"] == {"current": "2 mA", "until": "0 V"}


@pytest.mark.parametrize("text, message", [
    ("a: 1\na: 2\n", "2:1: duplicate key 'a'"),
    ("!!python/object:os.system {}\n", "1:1: unsupported YAML tag"),
    ("a: !!binary aGVsbG8=\n", "1:4: unsupported YAML tag"),
    ("? [1, 2]\n: x\n", "1:3: a key must be plain text"),
    ("1: x\n", "1:1: the key '1' must be text"),
    ("a: *nowhere\n", "1:4: unknown YAML alias *nowhere"),
    ("a: 1\n---\nb: 2\n", "2:1: expected one YAML document"),
    ("a: [1, 2\n", "malformed YAML"),
    ("", "1:1: empty file"),
])
def test_refusals_are_protocol_errors_with_a_location(text: str, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        load_yaml(text, "f.yaml")
    assert info.value.file == "f.yaml" and info.value.line is not None
    assert message in str(info.value)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ProtocolError, match="too many YAML aliases|too large"):
        load_yaml("\n".join(lines) + "\n")


def test_expansion_is_bounded_even_with_few_aliases(monkeypatch) -> None:
    monkeypatch.setattr(yamlsafe, "MAX_NODES", 1000)
    text = "a: &a [" + ", ".join(["x"] * 100) + "]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(ProtocolError, match="too large once aliases are expanded"):
        load_yaml(text)


def test_depth_and_size_limits() -> None:
    with pytest.raises(ProtocolError, match="nesting too deep"):
        load_yaml("a: " + "[" * 100 + "]" * 100)
    with pytest.raises(ProtocolError, match="file too large"):
        load_yaml("a: '" + "x" * (yamlsafe.MAX_BYTES + 1) + "'")


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ProtocolError, match="recursive YAML alias"):
        load_yaml("a: &a [1, *a]\n")
