"""How long the protocol language takes: load (safe YAML + schema) and compile, per shipped protocol,
and how quickly a hostile file is refused. Prints a table."""

from __future__ import annotations

import time
from pathlib import Path

from cyclerctl.errors import ProtocolError
from cyclerctl.protocol import compile_protocol, load_text

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeat: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def refuse(text: str) -> None:
    try:
        load_text(text)
    except ProtocolError:
        return
    raise AssertionError("hostile document was accepted")


def main() -> None:
    rows = []
    for path in sorted((ROOT / "protocols").glob("*.yaml")):
        text = path.read_text()
        protocol = load_text(text, str(path))
        program = compile_protocol(protocol)
        t_load = best_of(lambda text=text: load_text(text))
        t_compile = best_of(lambda protocol=protocol: compile_protocol(protocol))
        rows.append((path.stem, len(text), len(program.instructions), t_load * 1e3, t_compile * 1e3))
    print(f"{'protocol':32} {'bytes':>7} {'instr':>6} {'load ms':>8} {'compile ms':>10}")
    for name, size, n, tl, tc in rows:
        print(f"{name:32} {size:7d} {n:6d} {tl:8.2f} {tc:10.2f}")

    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        laughs.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    hostile = {
        "billion laughs (10^9 values)": "\n".join(laughs) + "\n",
        "nesting 10,000 deep": "a: " + "[" * 10_000 + "]" * 10_000,
        "1 MB + 1 byte": "a: '" + "x" * 1_000_000 + "'",
        "python object tag": "!!python/object/apply:os.system [echo]\n",
    }
    print()
    print(f"{'hostile document':32} {'refused in ms':>14}")
    for name, text in hostile.items():
        print(f"{name:32} {best_of(lambda text=text: refuse(text), repeat=5) * 1e3:14.2f}")


if __name__ == "__main__":
    main()
