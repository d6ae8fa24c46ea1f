"""Algorithm registry: name -> adapter class, and the one place that lists the algorithms and their file
detection order.

Adding an algorithm is one file ``lyco/algos/<module>.py`` that ends with ``register(<Class>)`` plus one entry in
:data:`ALGORITHM_MODULES` (see ``docs/adding-an-algorithm.md``).  The registry is filled when :mod:`lyco.algos` is
imported and never changed afterwards.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import torch

    from .base import AdapterModule

#: every algorithm module of :mod:`lyco.algos`, in **file detection order**: a module's tensors belong to the
#: first algorithm (by its module's place here) whose ``detect`` accepts them.  Modules whose files cannot be told
#: apart from another algorithm's (DyLoRA writes LoRA files) detect nothing and may go anywhere.
ALGORITHM_MODULES: tuple[str, ...] = (
    "ia3",      # `on_input` marks (IA)³ before anything else reads its `weight`
    "lora",
    "loha",
    "lokr",
    "boft",     # 4-D oft_blocks
    "oft",      # 3-D oft_blocks (diag-OFT)
    "glora",
    "full",
    "norm",
    "dylora",   # LoRA files; never detected
)

_ALGOS: dict[str, type[AdapterModule]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[AdapterModule], *, aliases: tuple[str, ...] = ()) -> type[AdapterModule]:
    """Register an algorithm class under ``cls.algo`` (and aliases).  Its module must be in ALGORITHM_MODULES."""
    module = cls.__module__.rsplit(".", 1)[-1]
    if module not in ALGORITHM_MODULES:
        raise RuntimeError(f"{cls.__name__}: add {module!r} to lyco.algos.registry.ALGORITHM_MODULES")
    if cls.algo in _ALGOS or cls.algo in _ALIASES:
        raise RuntimeError(f"{cls.__name__}: algorithm name {cls.algo!r} is already registered")
    _ALGOS[cls.algo] = cls
    for a in aliases:
        _ALIASES[a] = cls.algo
    return cls


def canonical(name: str) -> str:
    n = str(name).lower().strip()
    n = _ALIASES.get(n, n)
    if n not in _ALGOS:
        raise ConfigError(f"unknown algorithm {name!r}{did_you_mean(n, available())}; valid: {', '.join(available())}")
    return n


def get(name: str) -> type[AdapterModule]:
    return _ALGOS[canonical(name)]


def available() -> list[str]:
    return sorted(set(_ALGOS) | set(_ALIASES))


def classes() -> Mapping[str, type[AdapterModule]]:
    """Every registered algorithm class by canonical name."""
    return dict(_ALGOS)


def _place(cls: type[AdapterModule]) -> int:
    module = cls.__module__.rsplit(".", 1)[-1]
    return ALGORITHM_MODULES.index(module) if module in ALGORITHM_MODULES else len(ALGORITHM_MODULES)


def detection_order() -> list[type[AdapterModule]]:
    return sorted(_ALGOS.values(), key=_place)


def detect(tensors: dict[str, torch.Tensor]) -> type[AdapterModule] | None:
    """The algorithm a module's tensors (part name -> tensor) belong to (first match in ALGORITHM_MODULES order)."""
    for cls in detection_order():
        if cls.detect(tensors):
            return cls
    return None


def for_layer_kind(kind: str) -> type[AdapterModule]:
    """The algorithm lyco uses for layers of ``kind`` that only one algorithm adapts (``"norm"``)."""
    found = [c for c in detection_order() if c.layer_kinds == frozenset({kind})]
    if len(found) != 1:
        raise RuntimeError(f"expected exactly one algorithm dedicated to {kind!r} layers, found {len(found)}")
    return found[0]
