"""Adapter algorithms.  Importing this package registers every algorithm listed in
:data:`lyco.algos.registry.ALGORITHM_MODULES`."""
from importlib import import_module

from .base import AdapterModule
from .geometry import Geometry
from .options import AlgoOptions
from .registry import ALGORITHM_MODULES, available, canonical, detect, get

for _module in ALGORITHM_MODULES:  # registration side effects, in detection order
    import_module(f"{__name__}.{_module}")

__all__ = ["AdapterModule", "AlgoOptions", "Geometry", "available", "canonical", "detect", "get"]
