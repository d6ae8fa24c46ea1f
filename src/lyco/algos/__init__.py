"""Adapter algorithms.  Importing this package registers every algorithm."""
from . import full, loha, lokr, lora  # noqa: F401  (registration side effects)
from .base import AdapterModule
from .geometry import Geometry
from .options import AlgoOptions
from .registry import available, canonical, detect, get

__all__ = ["AdapterModule", "AlgoOptions", "Geometry", "available", "canonical", "detect", "get"]
