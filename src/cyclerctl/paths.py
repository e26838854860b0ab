"""Where the shipped data folders (protocols/, drivers/, sim/) are, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The shipped folder `name` ("protocols", "drivers" or "sim").

    In a wheel the folders are packaged as cyclerctl/data/NAME; in a source checkout (or an editable
    install) they are at the top of the repository."""
    packaged = _PKG / "data" / name
    if packaged.is_dir():
        return packaged
    checkout = _PKG.parents[1] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"shipped data folder {name!r} not found (reinstall cyclerctl)")


def resolve_data_file(value: str | Path, folder: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path:
    """A path as given, or the name of a shipped file in `folder` (with or without suffix)."""
    p = Path(value)
    if p.is_file():
        return p
    base = data_dir(folder)
    for cand in [base / p, *[base / (str(p) + s) for s in suffixes]]:
        if cand.is_file():
            return cand
    raise FileNotFoundError(str(value))
