"""Algorithm registry: name -> adapter class, plus file detection order.

Each algorithm file ends with one ``register(...)`` call; :mod:`lyco.algos` imports them all.  The registry is
filled at import time only and never changed afterwards.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from .base import AdapterModule

_ALGOS: dict[str, type["AdapterModule"]] = {}
_ALIASES: dict[str, str] = {}
_DETECT: list[tuple[int, type["AdapterModule"]]] = []


def register(cls: type["AdapterModule"], *, aliases: tuple[str, ...] = (), detect_order: int | None = None):
    """Register an algorithm class under ``cls.algo`` (and aliases); ``detect_order`` ranks file detection."""
    _ALGOS[cls.algo] = cls
    for a in aliases:
        _ALIASES[a] = cls.algo
    if detect_order is not None:
        _DETECT.append((detect_order, cls))
        _DETECT.sort(key=lambda t: t[0])
    return cls


def canonical(name: str) -> str:
    n = str(name).lower().strip()
    n = _ALIASES.get(n, n)
    if n not in _ALGOS:
        raise ConfigError(f"unknown algorithm {name!r}{did_you_mean(n, available())}; valid: {', '.join(available())}")
    return n


def get(name: str) -> type["AdapterModule"]:
    return _ALGOS[canonical(name)]


def available() -> list[str]:
    return sorted(set(_ALGOS) | set(_ALIASES))


def detection_order() -> list[type["AdapterModule"]]:
    return [cls for _, cls in _DETECT]


def detect(tensors) -> type["AdapterModule"] | None:
    """The algorithm a module's tensors (part name -> tensor) belong to (first match in ``detect_order``)."""
    for cls in detection_order():
        if cls.detect(tensors):
            return cls
    return None
