"""Adapter algorithms.  Importing this package registers every algorithm."""
from . import boft, dylora, full, glora, ia3, loha, lokr, lora, norm, oft  # noqa: F401  (registration side effects)
from .base import AdapterModule
from .geometry import Geometry
from .options import AlgoOptions
from .registry import available, canonical, detect, get

__all__ = ["AdapterModule", "AlgoOptions", "Geometry", "available", "canonical", "detect", "get"]
