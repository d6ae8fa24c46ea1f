"""lyco: LyCORIS adapters (LoRA/LoCon, LoHa, LoKr, DoRA, full ...) for Stable Diffusion and any PyTorch model.

Public API::

    cfg = lyco.AdapterConfig(algo="loha", dim=8, alpha=4)
    net = lyco.attach(model, cfg)          # or lyco.attach(model, algo="loha", dim=8)
    ...train net.parameters()...
    net.save("adapter.safetensors")
    net.detach()
    net = lyco.load("adapter.safetensors", model)
    net.set_multiplier(0.7); net.merge(); net.unmerge()
"""
from ._version import __version__
from .config import AdapterConfig
from .errors import (
    ConfigError,
    FileFormatError,
    LycoError,
    MissingTokenizerError,
    StateError,
    TargetError,
    TrainingError,
)
from .network import Network, attach, load

__all__ = [
    "AdapterConfig", "Network", "attach", "load",
    "LycoError", "ConfigError", "TargetError", "FileFormatError", "StateError", "MissingTokenizerError",
    "TrainingError",
    "__version__",
]
