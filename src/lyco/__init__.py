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
__version__ = "0.1.0"

from .config import AdapterConfig  # noqa: E402
from .errors import (ConfigError, FileFormatError, LycoError, MissingTokenizerError, StateError, TargetError,  # noqa: E402
                     TrainingError)
from .network import Network, attach, load  # noqa: E402

__all__ = [
    "AdapterConfig", "Network", "attach", "load",
    "LycoError", "ConfigError", "TargetError", "FileFormatError", "StateError", "MissingTokenizerError", "TrainingError",
    "__version__",
]
