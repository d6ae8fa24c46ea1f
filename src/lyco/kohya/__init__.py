"""The kohya sd-scripts plug-in: ``--network_module lyco.kohya --network_args "algo=lokr" "factor=8" ...``.

Implements sd-scripts' network-module contract (``create_network``, ``create_network_from_weights`` and the
network methods train_network.py and gen_img.py call) on top of lyco's adapters.  The same command line builds
the same modules as ``--network_module lycoris.kohya`` (lycoris-lora 4.1.3); the deliberate differences are in
:data:`lyco.kohya.args.DIFFERENCES` and docs/kohya-plugin.md.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..io.files import read_file
from .args import DIFFERENCES, network_config, parse_network_args
from .network import LycoKohyaNetwork, make_roots

__all__ = ["DIFFERENCES", "LycoKohyaNetwork", "create_network", "create_network_from_weights", "make_roots",
           "parse_network_args"]


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae: Any,
                   text_encoder: Any, unet: nn.Module, neuron_dropout: float | None = None, **kwargs: Any
                   ) -> LycoKohyaNetwork:
    """The network sd-scripts' command line describes (attached later, at ``apply_to``)."""
    cfg, extras = network_config(network_dim, network_alpha, neuron_dropout, kwargs)
    return LycoKohyaNetwork(cfg, multiplier, extras, text_encoder, unet)


def create_network_from_weights(multiplier: float, file: str | None, vae: Any, text_encoder: Any, unet: nn.Module,
                                weights_sd: dict[str, torch.Tensor] | None = None, for_inference: bool = False,
                                **kwargs: Any) -> tuple[LycoKohyaNetwork, dict[str, torch.Tensor]]:
    """A network whose modules come from the file's keys and shapes (nothing default is built and discarded).

    Used by ``--dim_from_weights``, ``--base_weights`` and the generation scripts."""
    if weights_sd is None:
        if file is None or not os.path.exists(file):
            raise ConfigError(f"create_network_from_weights: no weights file ({file!r}); --dim_from_weights and "
                              "--base_weights need an existing --network_weights / --base_weights file")
        weights_sd, _ = read_file(file)
    _, extras = parse_network_args(kwargs)
    net = LycoKohyaNetwork(None, multiplier, extras, text_encoder, unet)
    net._staged = weights_sd
    return net, weights_sd
