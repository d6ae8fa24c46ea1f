"""``LycoKohyaNetwork``: what sd-scripts' train_network.py / gen_img.py see as "the network"."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from ..config import AdapterConfig
from ..errors import ConfigError
from ..inject import Root
from ..io.files import read_file
from ..network import Network, build_network, network_from_tensors
from ..sd.naming import te_aliases, te_namer
from ..train.optim import apply_max_norm
from . import weights as W
from .args import check_train_args

log = logging.getLogger("lyco")

#: parameters that get the LoRA+ learning rate (the "up" side of each factorisation)
LORAPLUS_UP = ("lora_up", "hada_w1_a", "hada_w2_a")


def _te_list(text_encoder: Any) -> list[nn.Module]:
    if text_encoder is None:
        return []
    return list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]


def unet_family(unet: nn.Module | None) -> str:
    """sd-scripts trains SDXL on a UNet in the LDM layout (``input_blocks`` ...), SD1/SD2 on diffusers' layout."""
    return "sdxl" if unet is not None and hasattr(unet, "input_blocks") else ""


def make_roots(text_encoder: Any, unet: nn.Module | None, apply_te: bool = True, apply_unet: bool = True) -> list[Root]:
    """sd-scripts models: path-derived UNet names (its SDXL UNet already has the LDM layout), fixed TE names."""
    roots = []
    if unet is not None and apply_unet:
        roots.append(Root("lora_unet", unet, family=unet_family(unet)))
    tes = _te_list(text_encoder)
    prefixes = ["lora_te"] if len(tes) == 1 else ["lora_te1", "lora_te2"]
    if apply_te:
        for p, te in zip(prefixes, tes):
            roots.append(Root(p, te, namer=te_namer(p), read_aliases=te_aliases(p)))
    return roots


class LycoKohyaNetwork(nn.Module):
    """The adapters are attached at :meth:`apply_to`.  The state dict has the file's keys (``lora_unet_….lora_down
    .weight``, ``….alpha``), each tensor once, so ``load_state_dict(file_tensors)`` works as sd-scripts expects."""

    # the models, as plain references (set through __dict__ in __init__)
    _te: Any
    _unet: nn.Module | None

    def __init__(self, config: AdapterConfig | None, multiplier: float, extras: dict[str, Any],
                 text_encoder: Any = None, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.multiplier = multiplier
        self.extras = dict(extras)
        # plain references: registering the models as submodules would make them part of the network
        self.__dict__["_te"], self.__dict__["_unet"] = text_encoder, unet
        self.net: Network | None = None  # registered as the only submodule once attached
        self._staged: dict[str, torch.Tensor] | None = None
        self._skipped_sides: tuple[str, ...] = ()
        self.loraplus_lr_ratio = extras.get("loraplus_lr_ratio")
        self.loraplus_unet_lr_ratio = extras.get("loraplus_unet_lr_ratio")
        self.loraplus_text_encoder_lr_ratio = extras.get("loraplus_text_encoder_lr_ratio")
        self._register_state_dict_hook(_state_dict_hook)
        self._register_load_state_dict_pre_hook(_load_pre_hook, with_module=True)
        self.register_load_state_dict_post_hook(_load_post_hook)

    # ------------------------------------------------------------------ building
    def prepare_network(self, args: Any) -> None:
        """Called by train_network.py right after creation: options the plug-in cannot honour fail here."""
        check_train_args(args)

    def apply_to(self, text_encoder: Any = None, unet: nn.Module | None = None, apply_text_encoder: bool = True,
                 apply_unet: bool = True) -> None:
        te = text_encoder if text_encoder is not None else self._te
        un = unet if unet is not None else self._unet
        roots = make_roots(te, un, apply_text_encoder, apply_unet)
        if not roots:
            raise ConfigError("apply_to: nothing to adapt (apply_text_encoder and apply_unet are both false)")
        self._skipped_sides = (() if apply_text_encoder else ("lora_te",)) + (() if apply_unet else ("lora_unet",))
        staged, self._staged = self._staged, None
        if self.config is None:  # create_network_from_weights: the file defines the network
            assert staged is not None
            self.net = network_from_tensors(staged, roots, multiplier=self.multiplier, strict=False,
                                            source="network weights")
        else:
            self.net = build_network(roots, self.config, self.multiplier)
            if staged is not None:  # load_weights before apply_to (older sd-scripts)
                W.load_into(self.net, staged, "network weights", self._skipped_sides)
        counts: dict[str, int] = {}
        for s in self.net._sites.values():
            counts[s.root.prefix] = counts.get(s.root.prefix, 0) + 1
        log.info("lyco.kohya: matched modules per side: %s", counts)

    def load_weights(self, file: str) -> dict[str, Any]:
        """``--network_weights``: checked module by module; the file's alphas win (reported)."""
        tensors, _ = read_file(file)
        if self.net is None or not self.net.attached:  # sd-scripts may call this before apply_to: stage it
            self._staged = tensors
            return {"staged": len(tensors)}
        return W.load_into(self.net, tensors, f"--network_weights {file}", self._skipped_sides)

    # ------------------------------------------------------------------ training contract
    def _require(self) -> Network:
        if self.net is None:
            raise ConfigError("call apply_to(text_encoder, unet) first")
        return self.net

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier
        if self.net is not None:
            self.net.set_multiplier(multiplier)

    def prepare_optimizer_params(self, text_encoder_lr: Any = None, unet_lr: float | None = None,
                                 default_lr: float | None = None) -> tuple[list[dict], list[str]]:
        """One group per side (unet, te, te2), plus a LoRA+ group for the up factors; lr 0/None groups omitted."""
        net = self._require()
        te_lrs = list(text_encoder_lr) if isinstance(text_encoder_lr, (list, tuple)) else [text_encoder_lr]
        sides: dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]] = {}
        for name, a in net.adapters.items():
            side = "unet" if not name.startswith("lora_te") else ("te2" if name.startswith("lora_te2") else "te")
            plain, plus = sides.setdefault(side, ([], []))
            for pname, p in a.named_parameters():
                (plus if pname in LORAPLUS_UP else plain).append(p)
        groups, desc = [], []
        for side, (plain, plus) in sides.items():
            if side == "unet":
                lr, ratio = unet_lr, self.loraplus_unet_lr_ratio
            else:
                lr = te_lrs[1] if side == "te2" and len(te_lrs) > 1 else te_lrs[0]
                ratio = self.loraplus_text_encoder_lr_ratio
            lr = default_lr if lr is None else lr
            ratio = ratio or self.loraplus_lr_ratio
            if not lr:
                log.info("lyco.kohya: %s parameters have lr %s and are not trained", side, lr)
                continue
            if ratio and plus:
                groups += [{"params": plain, "lr": lr}, {"params": plus, "lr": lr * ratio}]
                desc += [side, f"{side} plus"]
            else:
                groups.append({"params": plain + plus, "lr": lr})
                desc.append(side)
        return groups, desc

    def prepare_optimizer_params_with_multiple_te_lrs(self, text_encoder_lr, unet_lr, default_lr):
        return self.prepare_optimizer_params(text_encoder_lr, unet_lr, default_lr)

    def enable_gradient_checkpointing(self) -> None:
        pass  # adapters hold no activations of their own; the models' own checkpointing covers them

    def prepare_grad_etc(self, text_encoder: Any = None, unet: Any = None) -> None:
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder: Any = None, unet: Any = None) -> None:
        self.train()

    def on_step_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_trainable_params(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def is_mergeable(self) -> bool:
        return True

    def set_loraplus_lr_ratio(self, loraplus_lr_ratio=None, loraplus_unet_lr_ratio=None,
                              loraplus_text_encoder_lr_ratio=None):
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_unet_lr_ratio = loraplus_unet_lr_ratio
        self.loraplus_text_encoder_lr_ratio = loraplus_text_encoder_lr_ratio

    def apply_max_norm_regularization(self, max_norm_value: float, device: Any = None) -> tuple[int, float, float]:
        return apply_max_norm(self._require(), max_norm_value)

    def save_weights(self, file: str, dtype: torch.dtype | None, metadata: dict[str, str] | None) -> None:
        if not str(file).lower().endswith(".safetensors"):
            raise ConfigError(f"{file}: lyco.kohya writes .safetensors files only; use --save_model_as safetensors")
        meta = dict(metadata or {})
        meta.setdefault("ss_network_module", "lyco.kohya")
        self._require().save(file, dtype=dtype, metadata={k: str(v) for k, v in meta.items()})

    def merge_to(self, text_encoder: Any, unet: nn.Module, weights_sd: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, device: Any = None) -> None:
        """Bake weights into the models at this network's multiplier (sd-scripts' --base_weights)."""
        tensors = weights_sd if weights_sd is not None else self._staged
        if tensors is None:
            raise ConfigError("merge_to needs weights (pass weights_sd or load_weights first)")
        net = network_from_tensors(tensors, make_roots(text_encoder, unet), multiplier=self.multiplier, strict=False,
                                   source="base weights")
        net.bake()


# ---------------------------------------------------------------------------------------------------------
# state-dict hooks: the file's keys outside, lyco's parameters inside (works under DDP wrapping too)


def _state_dict_hook(module: LycoKohyaNetwork, state_dict: dict, prefix: str, local_metadata: Any) -> dict:
    for k in [k for k in state_dict if k.startswith(prefix + "net.")]:
        del state_dict[k]
    for k, t in W.file_state(module.net).items():
        state_dict[prefix + k] = t
    return state_dict


def _load_pre_hook(module: LycoKohyaNetwork, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                   missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    if module.net is None:  # before apply_to: stage the file keys, apply_to loads them
        staged = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict)
                  if k.startswith(prefix) and not k.startswith(prefix + "net.")}
        if staged:
            module._staged = staged
        return
    W.to_internal(module.net, state_dict, prefix)


def _load_post_hook(module: LycoKohyaNetwork, incompatible_keys: Any) -> None:
    W.to_file_keys(module.net, incompatible_keys.missing_keys)
