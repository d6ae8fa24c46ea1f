"""Stable Diffusion (1.x, 2.x, SDXL) integration: kohya names, presets, one network over UNet + text encoders.

    pipe = lyco.sd.load_pipeline("models/sd15.safetensors")        # or a diffusers folder, or "builtin:tiny"
    net = lyco.sd.attach(pipe, lyco.AdapterConfig(algo="lokr", dim=10000, factor=8))   # preset attn-mlp
    image = pipe("a photo").images[0]
    net.save("my_lokr.safetensors", dtype=torch.float16)
    lyco.sd.load(pipe, "a.safetensors", ("b.safetensors", 0.5), te_multiplier=0.0)
"""
from __future__ import annotations

import os
from typing import Any, overload

from ..config import AdapterConfig
from ..errors import ConfigError
from ..inject import Root
from ..network import Network, build_network, network_from_tensors, read_adapter
from .info import ModelInfo, adapter_metadata, model_info, unet_family
from .naming import te_aliases, te_namer, unet_aliases, unet_namer
from .pipelines import load_pipeline
from .single_file import detect_family, load_single_file, save_single_file, to_ldm_state_dict
from .tokenizers import resolve_tokenizer

__all__ = ["ModelInfo", "adapter_metadata", "attach", "detect_family", "load", "load_pipeline", "load_single_file",
           "model_info", "resolve_tokenizer", "roots", "save_single_file", "to_ldm_state_dict"]


def _text_encoders(pipe: Any) -> list[tuple[str, Any]]:
    te1 = getattr(pipe, "text_encoder", None)
    te2 = getattr(pipe, "text_encoder_2", None)
    if te2 is not None:
        return [(p, t) for p, t in (("lora_te1", te1), ("lora_te2", te2)) if t is not None]
    return [("lora_te", te1)] if te1 is not None else []


def roots(pipe: Any, *, unet: bool = True, text_encoder: bool = True, unet_config: AdapterConfig | None = None,
          te_config: AdapterConfig | None = None) -> list[Root]:
    """The roots of a pipeline (UNet and text encoders) with kohya naming for its family."""
    family = unet_family(pipe.unet.config)
    ldm = family == "sdxl"
    out = []
    if unet:
        out.append(Root("lora_unet", pipe.unet, namer=unet_namer(pipe.unet.config, ldm),
                        read_aliases=unet_aliases(pipe.unet.config, ldm), config=unet_config, family=family))
    if text_encoder:
        for prefix, te in _text_encoders(pipe):
            out.append(Root(prefix, te, namer=te_namer(prefix), read_aliases=te_aliases(prefix), config=te_config,
                            family=family))
    return out


def _with_default_preset(cfg: AdapterConfig) -> AdapterConfig:
    if cfg.preset is None and cfg.target_modules is None and cfg.target_names is None:
        return cfg.model_copy(update={"preset": "attn-mlp"})
    return cfg


def attach(pipe: Any, config: AdapterConfig | None = None, *, text_encoder: bool = True, unet: bool = True,
           te_config: AdapterConfig | None = None, multiplier: float = 1.0, **options: Any) -> Network:
    """Attach one network covering the UNet and (unless ``text_encoder=False``) the text encoder(s).

    Without targets the preset is ``attn-mlp``.  ``te_config`` gives the text encoders their own config.
    Module names follow kohya (SD1/SD2: diffusers layout; SDXL: LDM layout; text encoders ``lora_te*_``).
    """
    if config is None:
        config = AdapterConfig(**options)
    elif options:
        raise ConfigError(f"pass either an AdapterConfig or keyword options, not both (got {sorted(options)})")
    config = _with_default_preset(config)
    te_cfg = _with_default_preset(te_config) if te_config is not None else None
    if not unet and not text_encoder:
        raise ConfigError("nothing to attach: unet=False and text_encoder=False")
    net = build_network(roots(pipe, unet=unet, text_encoder=text_encoder, te_config=te_cfg), config, multiplier)
    net.base_metadata.update(adapter_metadata(model_info(pipe)))
    return net


@overload
def load(pipe: Any, file: Any, /, *, multiplier: float = 1.0, unet_multiplier: float | None = None,
         te_multiplier: float | None = None, strict: bool = True, allow_nonfinite: bool = False) -> Network: ...


@overload
def load(pipe: Any, *files: Any, multiplier: float = 1.0, unet_multiplier: float | None = None,
         te_multiplier: float | None = None, strict: bool = True, allow_nonfinite: bool = False,
         ) -> Network | list[Network]: ...


def load(pipe: Any, *files: Any, multiplier: float = 1.0, unet_multiplier: float | None = None,
         te_multiplier: float | None = None, strict: bool = True, allow_nonfinite: bool = False,
         ) -> Network | list[Network]:
    """Load adapter files onto a pipeline.  Each file is a path or ``(path, multiplier)``: a kohya/LyCORIS file, a
    PEFT adapter folder (``unet/``, ``text_encoder/`` subfolders) or a diffusers-format LoRA file.

    ``unet_multiplier`` / ``te_multiplier`` override the strength of every file's UNet / text-encoder part.
    Returns the Network (one file) or a list of Networks (several).
    """
    if not files:
        raise ConfigError("lyco.sd.load: give at least one adapter file")
    nets = []
    for item in files:
        path, mult = (item if isinstance(item, (tuple, list)) else (item, multiplier))
        pipe_roots = roots(pipe)
        tensors, meta = read_adapter(path, pipe_roots)
        net = network_from_tensors(tensors, pipe_roots, multiplier=float(mult), strict=strict, source=str(path),
                                   metadata=meta, allow_nonfinite=allow_nonfinite)
        if unet_multiplier is not None:
            net.set_multiplier(unet_multiplier, prefix="lora_unet")
        if te_multiplier is not None:
            net.set_multiplier(te_multiplier, prefix="lora_te")
        net.base_metadata.update(adapter_metadata(model_info(pipe)))
        nets.append(net)
    return nets[0] if len(nets) == 1 else nets


def default_title(path: str | os.PathLike) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0]
