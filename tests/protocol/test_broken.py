"""Every deliberately broken protocol in broken/ is refused with its expected one-line message, at the
expected line and column (the `# expect:` header of each file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cyclerctl.cli import main
from cyclerctl.errors import ProtocolError
from cyclerctl.protocol import all_errors, compile_protocol, load

BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))


def expected(path: Path) -> str:
    m = re.search(r"^# expect: (.*)$", path.read_text(), re.M)
    assert m, f"{path.name} has no '# expect:' line"
    return m.group(1)


def test_there_are_at_least_25_broken_files() -> None:
    assert len(BROKEN) >= 25


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_file_is_refused_with_its_message(path: Path) -> None:
    with pytest.raises(ProtocolError) as info:
        compile_protocol(load(path))
    errors = all_errors(info.value)
    first = errors[0]
    assert first.file == str(path)
    assert first.line is not None and first.column is not None
    assert str(first) == f"{path}:{expected(path)}"
    assert all("\n" not in str(e) for e in errors)


def test_validate_prints_one_line_per_error_and_exits_nonzero(capsys) -> None:
    code = main(["validate", *map(str, BROKEN)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    for path in BROKEN:
        assert f"{path}:{expected(path)}" in err
    assert err[-1] == f"error: {len(BROKEN)} of {len(BROKEN)} files invalid"
    assert not any("Traceback" in line for line in err)
