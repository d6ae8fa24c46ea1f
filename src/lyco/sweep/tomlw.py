"""A small TOML writer for resolved configs (tables, arrays of tables, scalars and arrays; ``None`` is left out).

``tomllib.loads(dumps(d)) == d`` for the plain-data dicts lyco's configs dump to (without ``None`` values).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _table(d: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in d.items() if v is not None and not isinstance(v, Mapping) and not _is_table_array(v)]
    for k, v in scalars:
        lines.append(f"{_key(str(k))} = {_value(v)}")
    for k, v in d.items():
        if isinstance(v, Mapping):
            sub = path + [_key(str(k))]
            lines.append("")
            lines.append(f"[{'.'.join(sub)}]")
            _table(v, sub, lines)
        elif _is_table_array(v):
            sub = path + [_key(str(k))]
            for item in v:
                lines.append("")
                lines.append(f"[[{'.'.join(sub)}]]")
                _table(item, sub, lines)


def dumps(d: Mapping[str, Any], header: str = "") -> str:
    """``d`` as a TOML document, with ``header`` lines as comments on top."""
    lines = [f"# {ln}".rstrip() for ln in header.splitlines()]
    _table(d, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"
