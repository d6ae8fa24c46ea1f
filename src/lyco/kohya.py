"""The kohya sd-scripts plug-in: ``--network_module lyco.kohya --network_args "algo=lokr" "factor=8" ...``.

Implements sd-scripts' network-module contract (``create_network``, ``create_network_from_weights`` and the
network methods train_network.py calls) on top of lyco's adapters.  ``network_args`` keep LyCORIS's names and are
parsed with a typed schema: booleans accept only true/false/1/0, numbers are strict, unknown names are errors.
"""
from __future__ import annotations

import logging
import os
import typing
from typing import Any

import torch
import torch.nn as nn

from .algos import registry
from .config import OVERRIDE_KEYS, AdapterConfig
from .errors import ConfigError, did_you_mean
from .inject import Root
from .io.files import group_by_module, read_file
from .network import Network, build_network, network_from_tensors
from .sd.naming import te_aliases, te_namer
from .train.optim import apply_max_norm

log = logging.getLogger("lyco")

#: LyCORIS spellings accepted in network_args (old name -> lyco field)
ALIASES = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker", "constrain": "constraint", "bypass_mode": "path",
           "weight_decompose": "dora_wd", "wd_on_out": "wd_on_output"}
EXTRA_ARGS = {"loraplus_lr_ratio": float, "loraplus_unet_lr_ratio": float, "loraplus_text_encoder_lr_ratio": float,
              "disable_conv_cp": bool, "train_unet": bool, "train_text_encoder": bool}
ARG_FIELDS = tuple(sorted(set(OVERRIDE_KEYS) | {"preset", "train_norm", "exclude_names", "seed"}))


def parse_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise ConfigError(f"network_args {name}={v!r}: expected true/false/1/0")


def _field_type(name: str) -> Any:
    """The base Python type of an AdapterConfig field (Optional / Annotated unwrapped)."""
    t = AdapterConfig.model_fields[name].annotation
    for _ in range(3):
        if typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
            t = args[0]
    return t


def parse_network_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(AdapterConfig fields, plug-in extras) from sd-scripts' string ``network_args``."""
    cfg: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    valid = set(ARG_FIELDS) | set(ALIASES) | set(EXTRA_ARGS)
    for raw_key, v in kwargs.items():
        if v is None:
            continue
        key = raw_key
        if key in EXTRA_ARGS:
            t = EXTRA_ARGS[key]
            extra[key] = parse_bool(key, v) if t is bool else _num(key, v, t)
            continue
        if key not in valid:
            raise ConfigError(f"unknown network_args {raw_key!r}{did_you_mean(raw_key, valid)}; valid: {', '.join(sorted(valid))}")
        key = ALIASES.get(key, key)
        if raw_key == "bypass_mode":
            cfg["path"] = "bypass" if parse_bool(raw_key, v) else "auto"
            continue
        t = _field_type(key)
        if t is bool:
            cfg[key] = parse_bool(raw_key, v)
        elif t is int:
            cfg[key] = _num(raw_key, v, int)
        elif t is float:
            cfg[key] = _num(raw_key, v, float)
        elif typing.get_origin(t) is list:
            cfg[key] = [s.strip() for s in str(v).split(",") if s.strip()] if isinstance(v, str) else list(v)
        else:
            cfg[key] = str(v)
    if "disable_conv_cp" in extra:
        cfg["use_tucker"] = not extra.pop("disable_conv_cp")
    return cfg, extra


def _num(name: str, v: Any, t: type) -> Any:
    try:
        if t is int:
            f = float(v)
            if f != int(f):
                raise ValueError
            return int(f)
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"network_args {name}={v!r}: expected {'an integer' if t is int else 'a number'}") from None


def _te_list(text_encoder: Any) -> list[nn.Module]:
    if text_encoder is None:
        return []
    return list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]


def _roots(text_encoder: Any, unet: nn.Module | None, apply_te: bool = True, apply_unet: bool = True) -> list[Root]:
    """sd-scripts models: path-derived UNet names (its SDXL UNet already has the LDM layout), fixed TE names."""
    roots = []
    if unet is not None and apply_unet:
        roots.append(Root("lora_unet", unet))
    tes = _te_list(text_encoder)
    prefixes = ["lora_te"] if len(tes) == 1 else ["lora_te1", "lora_te2"]
    if apply_te:
        for p, te in zip(prefixes, tes):
            roots.append(Root(p, te, namer=te_namer(p), read_aliases=te_aliases(p)))
    return roots


class LycoKohyaNetwork(nn.Module):
    """What sd-scripts sees as "the network"; the adapters are attached at :meth:`apply_to`."""

    def __init__(self, config: AdapterConfig | None, multiplier: float, extras: dict[str, Any],
                 text_encoder: Any = None, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.multiplier = multiplier
        self.extras = dict(extras)
        # plain references: registering the models as submodules would make them part of the network
        self.__dict__["_te"], self.__dict__["_unet"] = text_encoder, unet
        self.net: Network | None = None
        self._staged: dict[str, torch.Tensor] | None = None
        self.loraplus_lr_ratio = extras.get("loraplus_lr_ratio")
        self.loraplus_unet_lr_ratio = extras.get("loraplus_unet_lr_ratio")
        self.loraplus_text_encoder_lr_ratio = extras.get("loraplus_text_encoder_lr_ratio")

    # ------------------------------------------------------------------ building
    def apply_to(self, text_encoder: Any = None, unet: nn.Module | None = None, apply_text_encoder: bool = True,
                 apply_unet: bool = True) -> None:
        te = text_encoder if text_encoder is not None else self._te
        un = unet if unet is not None else self._unet
        roots = _roots(te, un, apply_text_encoder, apply_unet)
        if not roots:
            raise ConfigError("apply_to: nothing to adapt (apply_text_encoder and apply_unet are both false)")
        if self._staged is not None:
            self.net = network_from_tensors(self._staged, roots, multiplier=self.multiplier, strict=False,
                                            source="network weights")
            self._staged = None
        else:
            assert self.config is not None
            self.net = build_network(roots, self.config, self.multiplier)
        self.add_module("lyco", self.net)
        counts: dict[str, int] = {}
        for s in self.net._sites.values():
            counts[s.root.prefix] = counts.get(s.root.prefix, 0) + 1
        log.info("lyco.kohya: matched modules per side: %s", counts)

    def load_weights(self, file: str) -> dict[str, Any]:
        tensors, _ = read_file(file)
        if self.net is None or not self.net.attached:  # sd-scripts may call this before apply_to: stage it
            self._staged = tensors
            return {"staged": len(tensors)}
        groups = group_by_module(tensors)
        loaded, missing = 0, []
        with torch.no_grad():
            for name, parts in groups.items():
                a = self.net.adapters[name] if name in self.net.adapters else None
                cls = registry.detect(parts)
                if a is None or cls is None:
                    missing.append(name)
                    continue
                fresh = cls.from_file(a.geom, parts, name, {})
                a.load_state_dict(fresh.state_dict())
                loaded += 1
        return {"loaded": loaded, "unexpected": missing}

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
                (plus if pname in ("lora_up", "hada_w1_a", "hada_w2_a") else plain).append(p)
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

    def set_loraplus_lr_ratio(self, loraplus_lr_ratio=None, loraplus_unet_lr_ratio=None, loraplus_text_encoder_lr_ratio=None):
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_unet_lr_ratio = loraplus_unet_lr_ratio
        self.loraplus_text_encoder_lr_ratio = loraplus_text_encoder_lr_ratio

    def apply_max_norm_regularization(self, max_norm_value: float, device: Any = None) -> tuple[int, float, float]:
        return apply_max_norm(self._require(), max_norm_value)

    def save_weights(self, file: str, dtype: torch.dtype | None, metadata: dict[str, str] | None) -> None:
        meta = dict(metadata or {})
        meta.setdefault("ss_network_module", "lyco.kohya")
        self._require().save(file, dtype=dtype, metadata={k: str(v) for k, v in meta.items()})

    def merge_to(self, text_encoder: Any, unet: nn.Module, weights_sd: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, device: Any = None) -> None:
        """Bake weights into the models at this network's multiplier (sd-scripts' --base_weights)."""
        tensors = weights_sd if weights_sd is not None else self._staged
        if tensors is None:
            raise ConfigError("merge_to needs weights (pass weights_sd or load_weights first)")
        net = network_from_tensors(tensors, _roots(text_encoder, unet), multiplier=self.multiplier, strict=False,
                                   source="base weights")
        net.bake()


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae: Any,
                   text_encoder: Any, unet: nn.Module, neuron_dropout: float | None = None, **kwargs: Any
                   ) -> LycoKohyaNetwork:
    args, extras = parse_network_args(kwargs)
    args.setdefault("dim", int(network_dim) if network_dim is not None else 4)
    if network_alpha is not None:
        args.setdefault("alpha", float(network_alpha))
    if neuron_dropout:
        args.setdefault("dropout", float(neuron_dropout))
    args.setdefault("preset", "kohya" if not args.get("conv_dim") else "kohya-conv")
    if args.get("conv_dim") is None and args["preset"] in ("kohya",):
        args["conv_dim"] = 0
    try:
        cfg = AdapterConfig(**args)
    except ConfigError as exc:
        raise ConfigError(f"network_args: {exc}") from None
    return LycoKohyaNetwork(cfg, multiplier, extras, text_encoder, unet)


def create_network_from_weights(multiplier: float, file: str | None, vae: Any, text_encoder: Any, unet: nn.Module,
                                weights_sd: dict[str, torch.Tensor] | None = None, for_inference: bool = False,
                                **kwargs: Any) -> tuple[LycoKohyaNetwork, dict[str, torch.Tensor]]:
    """A network whose modules come from the file's keys and shapes (nothing default is built and discarded)."""
    if weights_sd is None:
        if file is None or not os.path.exists(file):
            raise ConfigError(f"create_network_from_weights: no weights ({file!r})")
        weights_sd, _ = read_file(file)
    _, extras = parse_network_args(kwargs)
    net = LycoKohyaNetwork(None, multiplier, extras, text_encoder, unet)
    net._staged = weights_sd
    return net, weights_sd
