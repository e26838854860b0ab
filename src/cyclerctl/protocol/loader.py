"""Protocol files -> validated Protocol objects, with every error mapped back to file:line:column."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ProtocolError
from . import schema
from .yamlsafe import Locations, file_path, load_yaml, locate


class ProtocolErrors(ProtocolError):
    """Several problems in one file. str() is the first one (one line); `errors` holds them all."""

    def __init__(self, errors: list[ProtocolError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, first.file, first.line, first.column)

    def __str__(self) -> str:
        more = len(self.errors) - 1
        return super().__str__() + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def all_errors(exc: ProtocolError) -> list[ProtocolError]:
    """The individual errors carried by a ProtocolError (one, or several for ProtocolErrors)."""
    return list(exc.errors) if isinstance(exc, ProtocolErrors) else [exc]


def raise_all(errors: list[ProtocolError]) -> None:
    """Raise the collected errors (deduplicated, in file order); do nothing if there are none."""
    seen: set[tuple] = set()
    unique: list[ProtocolError] = []
    for e in errors:
        key = (e.file, e.line, e.column, e.message)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    if not unique:
        return
    unique.sort(key=lambda e: (e.line or 0, e.column or 0))
    raise unique[0] if len(unique) == 1 else ProtocolErrors(unique)


def _field_names(model: type[BaseModel], out: set[str]) -> set[str]:
    for name, f in model.model_fields.items():
        out.add(f.alias or name)
    return out


_KNOWN_KEYS: set[str] = set()
for _m in (schema.Protocol, schema.CellSpec, schema.LimitsSpec, schema.RecordSpec, schema.Common,
           schema.RestSettings, schema.CurrentSettings, schema.HoldSettings, schema.CCCVSettings,
           schema.SweepSettings, schema.EISSettings, schema.GITTSettings, schema.ICISettings,
           schema.TemperatureSettings, schema.RepeatSettings, schema.EndSpec, schema.RepeatStep):
    _field_names(_m, _KNOWN_KEYS)
_KNOWN_KEYS |= set(schema.KINDS)


@lru_cache(maxsize=1024)
def _close_key(key: str) -> str | None:
    """The known key a misspelled one most likely meant."""
    hint = difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1)
    return hint[0] if hint else None


def dotted(path: tuple) -> str:
    """("steps", 3, "gitt", "current") -> "steps[3].gitt.current"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(err: dict[str, Any], path: tuple) -> str:
    kind = err["type"]
    msg = err["msg"]
    field = err["loc"][-1] if err["loc"] else ""
    if kind == "extra_forbidden":
        hint = _close_key(str(field))
        if hint == field:
            return f"the key {field!r} does not belong here"
        return f"unknown key {field!r}" + (f" (did you mean {hint!r}?)" if hint else "")
    if kind == "missing":
        return f"missing {field!r}"
    if kind in ("string_type", "str_type"):
        return f"expected text, got {schema._describe(err.get('input'))}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {schema._describe(err.get('input'))}"
    if kind == "list_type":
        return f"expected a list, got {schema._describe(err.get('input'))}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {schema._describe(err.get('input'))}"
    if kind == "too_short" and path and path[-1] == "steps":
        return "needs at least one step"
    if kind == "too_short":
        return f"needs at least {err.get('ctx', {}).get('min_length', 1)} values"
    if kind == "too_long":
        return f"takes at most {err.get('ctx', {}).get('max_length', 1)} values"
    msg = msg.replace("Input should be", "expected").replace("Value error, ", "")
    if kind == "literal_error":
        msg += f", got {schema._describe(err.get('input'))}"
    return msg


def _from_validation(exc: ValidationError, locations: Locations, filename: str) -> list[ProtocolError]:
    out: list[ProtocolError] = []
    seen_paths: set[tuple] = set()
    errors = exc.errors(include_url=False)
    # "unknown key 'curent'" next to "missing 'current'": one mistake, reported once (as the typo)
    typos = set()
    for err in errors:
        if err["type"] == "extra_forbidden" and err["loc"]:
            hint = _close_key(str(err["loc"][-1]))
            if hint and hint != err["loc"][-1]:
                typos.add((tuple(err["loc"][:-1]), hint))
    for err in errors:
        if err["type"] == "missing" and err["loc"] and (tuple(err["loc"][:-1]), err["loc"][-1]) in typos:
            continue
        loc = tuple(err["loc"])
        path = file_path(locations, loc)
        key = (*path, loc[-1]) if err["type"] == "missing" and loc else path
        if key in seen_paths:
            continue  # one message per place (unions report once per member)
        seen_paths.add(key)
        line, col = locate(locations, loc, key=err["type"] == "extra_forbidden")
        where = dotted(path if err["type"] != "missing" else (*path, loc[-1]))
        message = _message(err, path)
        out.append(ProtocolError(f"{where}: {message}" if where else message, filename, line, col))
    return out


def _check_version(data: Any, locations: Locations, filename: str) -> None:
    if not isinstance(data, dict):
        raise ProtocolError(f"a protocol is a mapping that starts with 'cyclerctl: 1', got {schema._describe(data)}",
                            filename, *locations.get((), (1, 1)))
    if "cyclerctl" not in data:
        raise ProtocolError("not a cyclerctl protocol: add the version line 'cyclerctl: 1' at the top",
                            filename, 1, 1)
    version = data["cyclerctl"]
    if version != schema.VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this cyclerctl reads 'cyclerctl: {schema.VERSION}')",
            filename, *locations.get(("cyclerctl",), (1, 1)))


def load_text(text: str, filename: str = "<string>") -> schema.Protocol:
    """Parse and validate protocol text. Raises ProtocolError (file:line:col) on any problem."""
    if not isinstance(text, str):
        raise ProtocolError("protocol text must be a string", filename, 1, 1)
    data, locations = load_yaml(text, filename)
    _check_version(data, locations, filename)
    try:
        protocol = schema.Protocol.model_validate(data)
    except ValidationError as exc:
        raise_all(_from_validation(exc, locations, filename))
        raise  # unreachable: there was at least one error
    protocol._file = filename
    protocol._text = text
    protocol._locations = locations
    return protocol


def read_text(path: str | Path) -> str:
    """A file's text, refusing what is not a readable UTF-8 text file with a ProtocolError."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise ProtocolError("no such file", name)
    if not p.is_file():
        raise ProtocolError("not a file", name)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ProtocolError(f"cannot read the file: {exc.strerror or exc}", name) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8 text (byte {exc.start})", name, 1, 1) from None


def load(path: str | Path) -> schema.Protocol:
    """Load and validate a protocol file. Raises ProtocolError with file:line:col."""
    return load_text(read_text(path), str(path))
