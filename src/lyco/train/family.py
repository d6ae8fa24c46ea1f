"""Per-family hooks: prompt encoding (SD1/SD2 one text encoder, SDXL two + pooled + time ids) and targets."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _hidden(te: Any, ids: torch.Tensor, skip: int) -> torch.Tensor:
    """Last hidden state (clip_skip 1), or the state ``skip`` layers from the end through the final layer norm."""
    if skip <= 1:
        return te(ids)[0]
    h = te(ids, output_hidden_states=True).hidden_states[-skip]
    mod = te.module if hasattr(te, "module") else te
    return getattr(mod, "text_model", mod).final_layer_norm(h)


def encode(pipe: Any, te_modules: list[Any], captions: list[str], clip_skip: int, device: torch.device) -> dict:
    """Conditioning for the UNet: ``encoder_hidden_states`` (+ ``text_embeds`` for SDXL).

    ``te_modules`` are the text encoders to call (possibly DDP-wrapped), in pipeline order.
    """
    if getattr(pipe, "text_encoder_2", None) is None:
        ids = tokenize(pipe.tokenizer, captions).to(device)
        return {"encoder_hidden_states": _hidden(te_modules[0], ids, clip_skip)}
    ids1 = tokenize(pipe.tokenizer, captions).to(device)
    ids2 = tokenize(pipe.tokenizer_2 or pipe.tokenizer, captions).to(device)
    o1 = te_modules[0](ids1, output_hidden_states=True)
    o2 = te_modules[1](ids2, output_hidden_states=True)
    skip = max(2, clip_skip + 1)  # SDXL uses the penultimate layer
    h = torch.cat([o1.hidden_states[-skip], o2.hidden_states[-skip]], dim=-1)
    return {"encoder_hidden_states": h, "text_embeds": o2[0]}


def sdxl_time_ids(orig: tuple[int, int], crop: tuple[int, int], target: tuple[int, int], n: int,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ids = torch.tensor([[orig[1], orig[0], crop[1], crop[0], target[1], target[0]]], dtype=dtype, device=device)
    return ids.repeat(n, 1)


def unet_kwargs(cond: dict, time_ids: torch.Tensor | None) -> dict:
    kw = {"encoder_hidden_states": cond["encoder_hidden_states"]}
    if "text_embeds" in cond:
        kw["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"], "time_ids": time_ids}
    return kw


def loss_fn(pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
            scheduler: Any, prediction_type: str, min_snr_gamma: float | None) -> torch.Tensor:
    """MSE against ε or v, averaged per sample, optionally min-SNR weighted; fp32."""
    if prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    if min_snr_gamma:
        ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        snr = ac / (1 - ac)
        w = torch.clamp(snr, max=min_snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        per = per * w
    return per.mean()
