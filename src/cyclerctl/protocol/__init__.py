"""The protocol language: YAML files (cyclerctl: 1) -> validated Protocol -> compiled Program.

    protocol = load("protocols/hc_formation.yaml")          # ProtocolError with file:line:col
    program = compile_protocol(protocol)                     # or compile_file(path, cell_file, overrides)
    table = describe(program)                                # a rich Table for people

The reference is docs/protocol.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..channel import Capabilities
from ..program import Cell, Program
from .cell import load_cell, resolve_cell
from .compiler import compile_protocol
from .describe import describe, rows, summary
from .loader import ProtocolErrors, all_errors, load, load_text
from .schema import Protocol
from .steptext import parse_step_text

__all__ = [
    "Protocol",
    "ProtocolErrors",
    "all_errors",
    "compile_file",
    "compile_protocol",
    "describe",
    "load",
    "load_cell",
    "load_text",
    "parse_step_text",
    "resolve_cell",
    "rows",
    "summary",
]


def compile_file(path: str | Path, cell_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 capabilities: Capabilities | None = None) -> Program:
    """Load, resolve the cell (protocol < --cell file < overrides) and compile, in one call."""
    protocol = load(path)
    cell: Cell = resolve_cell(protocol, cell_file, overrides)
    return compile_protocol(protocol, cell, capabilities)
