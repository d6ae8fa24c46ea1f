"""Optimizers, learning-rate schedules, parameter groups (UNet / text encoder, LoRA+) and max-norm."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import ConfigError
from .config import OptimizerConfig, SchedulerConfig, TrainSection

log = logging.getLogger("lyco")


def param_groups(net: Any, t: TrainSection) -> list[dict[str, Any]]:
    """One group per side (UNet / text encoders), plus LoRA+ groups for the up factors; lr 0 groups are omitted."""
    sides = {"unet": (t.unet_lr if t.unet_lr is not None else t.lr),
             "te": (t.text_encoder_lr if t.text_encoder_lr is not None else t.lr)}
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, adapter in net.adapters.items():
        side = "te" if name.startswith("lora_te") else "unet"
        for pname, p in adapter.named_parameters():
            if not p.requires_grad:
                continue
            plus = bool(t.loraplus_lr_ratio) and pname in ("lora_up", "hada_w1_a", "hada_w2_a", "b1")
            buckets.setdefault((side, plus), []).append(p)
    groups = []
    for (side, plus), params in sorted(buckets.items()):
        lr = sides[side] * ((t.loraplus_lr_ratio or 1.0) if plus else 1.0)
        if not lr:
            log.info("lyco: %s parameters have lr 0 and are not trained", side)
            continue
        groups.append({"params": params, "lr": lr, "name": f"{side}{'+' if plus else ''}"})
        log.info("lyco: param group %s%s: %d tensors, lr %.3g", side, " (LoRA+)" if plus else "", len(params), lr)
    if not groups:
        raise ConfigError("no trainable parameters (every learning rate is 0)")
    return groups


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    clean = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    if cfg.name == "adamw":
        return torch.optim.AdamW(clean, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(clean, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                              "or use 'adamw'") from None
        return bnb.optim.AdamW8bit(clean, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError("optimizer prodigy needs prodigyopt (pip install prodigyopt); or use 'adamw'") from None
        return Prodigy(clean, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise ConfigError("optimizer lion needs lion-pytorch (pip install lion-pytorch); or use 'adamw'") from None
        return Lion(clean, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int, steps_per_epoch: int):
    from diffusers.optimization import get_scheduler
    warmup = cfg.warmup_steps or int(round(cfg.warmup_epochs * steps_per_epoch))
    kw: dict[str, Any] = {"num_warmup_steps": warmup, "num_training_steps": total_steps}
    if cfg.name == "cosine_with_restarts":
        kw["num_cycles"] = cfg.num_cycles
    if cfg.name == "polynomial":
        kw["power"] = cfg.power
    if cfg.name == "constant":
        kw = {}
    return get_scheduler(cfg.name, optimizer, **kw)


@torch.no_grad()
def apply_max_norm(net: Any, max_norm: float) -> tuple[int, float, float]:
    """kohya's scale_weight_norms: scale every module whose ‖ΔW‖ exceeds max_norm (via its scalar)."""
    scaled, norms = 0, []
    for a in net.adapters.values():
        if not a.scaled:
            continue
        n = float(a.delta_weight().norm())
        if n > max_norm:
            a.scalar.mul_(max_norm / n)
            scaled += 1
            n = max_norm
        norms.append(n)
    if not norms:
        return 0, 0.0, 0.0
    return scaled, sum(norms) / len(norms), max(norms)
