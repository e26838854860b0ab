"""Fault injection for simulated instruments, by flag: `KIND[@AT][+]`.

- `timeout@N`    the N-th reading gets no reply (the driver times out);
- `garble@N`     the N-th reading is answered with garbage;
- `disconnect@N` the connection is dropped instead of answering the N-th reading;
- `compliance@T` the cell disconnects at instrument time T s: a current source runs into its limit;
- `stuck@T`      from instrument time T s the readings freeze (same values, same timestamp);
- `unstable`     a chamber that never settles (oscillates around its setpoint).
A trailing `+` repeats a count fault at every later reading too (a fault that does not go away).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import ConfigError

KINDS = ("timeout", "garble", "disconnect", "compliance", "stuck", "unstable")
_COUNTED = ("timeout", "garble", "disconnect")
_SPEC = re.compile(r"^(?P<kind>[a-z]+)(?:@(?P<at>[0-9.eE+-]+?))?(?P<repeat>\+)?$")


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float = 0.0
    repeat: bool = False


class Faults:
    """The faults a simulated instrument was started with."""

    def __init__(self, faults: list[Fault] | None = None) -> None:
        self.faults = list(faults or [])

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...] | None) -> Faults:
        out = []
        for text in specs or ():
            for part in str(text).split(","):
                part = part.strip()
                if not part:
                    continue
                m = _SPEC.match(part)
                if not m or m.group("kind") not in KINDS:
                    raise ConfigError(f"unknown fault {part!r}; use KIND[@AT][+] with KIND one of "
                                      f"{', '.join(KINDS)} (e.g. timeout@20, compliance@600)")
                out.append(Fault(m.group("kind"), float(m.group("at") or 0), bool(m.group("repeat"))))
        return cls(out)

    def on_reading(self, n: int) -> str | None:
        """The counted fault (timeout, garble, disconnect) that hits the n-th reading (1-based)."""
        for f in self.faults:
            if f.kind in _COUNTED and (n == int(f.at) or (f.repeat and n >= int(f.at))):
                return f.kind
        return None

    def active(self, kind: str, t: float) -> bool:
        """Whether a timed fault (compliance, stuck, unstable) is in effect at instrument time t."""
        return any(f.kind == kind and t >= f.at for f in self.faults)

    def __bool__(self) -> bool:
        return bool(self.faults)
