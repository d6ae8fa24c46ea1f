"""One readable message for a pydantic ``ValidationError`` (every lyco config: adapter, trainer, evaluation)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import did_you_mean


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The key names (aliases where set) of the (nested) model an error location points into, for did-you-mean."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cur is None:
            continue
        fields = getattr(cur, "model_fields", {})
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        nested = [a for a in (ann, *args, *(x for a in args for x in getattr(a, "__args__", ())))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        cur = nested[0] if nested else None
    return [f.alias or k for k, f in getattr(cur, "model_fields", {}).items()]


def key_path(loc: tuple) -> str:
    """``('datasets', 0, 'folders')`` -> ``datasets[0].folders``."""
    path = ""
    for p in loc:
        path += f"[{p}]" if isinstance(p, int) else (("." if path else "") + str(p))
    return path


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str,
                            hint: Callable[[str, Any], str | None] | None = None) -> str:
    """``<source>: N problem(s) ...`` with one line per problem: unknown keys get a did-you-mean (or ``hint(key,
    value)`` when it knows the key, e.g. another tool's name for an option), missing keys are named, bad values
    show what was given."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = key_path(loc)
        if err["type"] == "extra_forbidden":
            known = hint(str(loc[-1]), err.get("input")) if hint else None
            lines.append(f"unknown key {path!r}" + (f" ({known})" if known else did_you_mean(str(loc[-1]),
                                                                                         fields_at(model, loc))))
        elif err["type"] == "missing":
            lines.append(f"missing required key {path!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or not loc else f" (got {got!r})"
            lines.append(f"{path or '<top level>'}: {msg}{shown}")
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n  - " + "\n  - ".join(lines)
