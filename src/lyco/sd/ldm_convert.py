"""diffusers <-> original (LDM/SGM) single-file layout for SD1.x, SD2.x and SDXL.

* diffusers -> LDM (:func:`to_ldm_state_dict`) is lyco's own; UNet module paths come from
  :func:`lyco.sd.naming.unet_path_to_ldm`.
* LDM -> diffusers (:func:`build_unet`, :func:`build_vae`, :func:`build_text_encoder`) uses diffusers' converters
  (``diffusers.loaders.single_file_utils``) and loads strictly: a missing, unexpected or mis-shaped weight is a
  :class:`~lyco.errors.FileFormatError`, never a silently random or meta tensor.
"""
from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import FileFormatError, short_list
from .ldm_detect import CLIP_SD1, CLIP_SDXL, OPENCLIP_SD2, OPENCLIP_SDXL, UNET, VAE
from .naming import unet_path_to_ldm

log = logging.getLogger("lyco")

TEXT_PREFIXES = {"sd1": (CLIP_SD1,), "sd2": (OPENCLIP_SD2,), "sdxl": (CLIP_SDXL, OPENCLIP_SDXL)}
_UNET_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
_ADAPTER_HINT = "(is an adapter still attached?  merge it into the weights or remove it first)"


# ----------------------------------------------------------------------------------------------- diffusers -> LDM
def _unet_to_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        ldm = unet_path_to_ldm(key, unet.config)
        if not ldm.startswith(_UNET_ROOTS):
            raise FileFormatError(f"UNet parameter '{key}' has no place in the original single-file layout "
                                  f"{_ADAPTER_HINT}")
        out[UNET + ldm] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key_to_ldm(key: str, n_up: int) -> str:
    """One diffusers AutoencoderKL key in the LDM layout (decoder up blocks are numbered in reverse)."""
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)$",
                 key)
    if m:
        side, kind, i, part, j, rest = m.groups()
        block = int(i) if kind == "down" else n_up - 1 - int(i)
        if j is not None:
            return f"{side}.{kind}.{block}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{side}.{kind}.{block}.{'downsample' if kind == 'down' else 'upsample'}.{rest}"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$",
                 key)
    if m:
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(weight|bias)$", key)
    if m:
        return f"{m[1]}.{'norm_out' if m[2] == 'conv_norm_out' else m[2]}.{m[3]}"
    if re.match(r"(post_)?quant_conv\.(weight|bias)$", key):
        return key
    raise FileFormatError(f"VAE parameter '{key}' has no place in the original single-file layout {_ADAPTER_HINT}")


def _vae_to_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    config: Any = vae.config  # a diffusers AutoencoderKL
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, n_up)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original mid-block attention is made of 1x1 convolutions
        out[VAE + ldm] = value
    return out


def _te_key(key: str) -> str:
    """A CLIP text model key as ``text_model.…`` / ``text_projection.…`` (transformers 4 and 5 spellings)."""
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


def _clip_to_ldm(te: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP keys under ``prefix`` + ``text_model.…`` (SD1, SDXL encoder 1), with the position ids."""
    out: dict[str, torch.Tensor] = {}
    for key, value in te.state_dict().items():
        k = _te_key(key)
        if not k.startswith(("text_model.embeddings.", "text_model.encoder.layers.", "text_model.final_layer_norm.")):
            raise FileFormatError(f"text encoder parameter '{key}' has no place in the original single-file "
                                  f"layout {_ADAPTER_HINT}")
        out[prefix + k] = value
    ids = prefix + "text_model.embeddings.position_ids"
    if ids not in out:
        te_config: Any = te.config  # a transformers CLIP text config
        out[ids] = torch.arange(te_config.max_position_embeddings, dtype=torch.int64)[None]
    return out


_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _openclip_layer_key(i: str, part: str, kind: str, key: str) -> str:
    if part not in _OPENCLIP_LAYER:
        raise FileFormatError(f"text encoder parameter '{key}' has no place in the OpenCLIP layout {_ADAPTER_HINT}")
    return f"transformer.resblocks.{i}.{_OPENCLIP_LAYER[part]}.{kind}"


def _openclip_to_ldm(te: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model in OpenCLIP layout: fused ``in_proj_weight``, ``text_projection`` as (width, dim)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in te.state_dict().items():
        k = _te_key(key)
        if k == "text_model.embeddings.position_ids":
            continue
        if k == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
            continue
        if k in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[k]] = value
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m is None:
            raise FileFormatError(f"text encoder parameter '{key}' has no place in the OpenCLIP layout "
                                  f"{_ADAPTER_HINT}")
        i, part, kind = m.groups()
        proj = re.match(r"self_attn\.([qkv])_proj$", part)
        if proj:
            qkv.setdefault((i, kind), {})[proj[1]] = value
        else:
            out[prefix + _openclip_layer_key(i, part, kind, key)] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise FileFormatError(f"text encoder layer {i}: q/k/v projections incomplete ({sorted(parts)})")
        out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    out[prefix + "logit_scale"] = torch.tensor(math.log(100.0), dtype=out[prefix + "ln_final.weight"].dtype)
    return out


def _pad_sd2_text_encoder(sd: dict[str, torch.Tensor], te: torch.nn.Module) -> None:
    """Complete the SD2 OpenCLIP encoder to the keys of the original file.

    SD2 uses the penultimate layer, so diffusers keeps one block fewer than OpenCLIP and no projection.  The file
    gets a copy of the last kept block in the dropped block's place and an identity ``text_projection``: strict
    loaders find every key, and no SD2 pipeline uses them (loading drops them again).
    """
    config: Any = te.config  # a transformers CLIP text config
    n = config.num_hidden_layers
    last, new = f"{OPENCLIP_SD2}transformer.resblocks.{n - 1}.", f"{OPENCLIP_SD2}transformer.resblocks.{n}."
    for key in [k for k in sd if k.startswith(last)]:
        sd[new + key[len(last):]] = sd[key].clone()
    width = config.hidden_size
    sd[OPENCLIP_SD2 + "text_projection"] = torch.eye(width, dtype=sd[OPENCLIP_SD2 + "ln_final.weight"].dtype)


def _component(pipe_or_components: Any, name: str) -> Any:
    if isinstance(pipe_or_components, Mapping):
        return pipe_or_components.get(name)
    return getattr(pipe_or_components, name, None)


def infer_pipeline_family(pipe_or_components: Any) -> str:
    """"sd1", "sd2" or "sdxl" from a diffusers pipeline (or a mapping of its components)."""
    unet = _component(pipe_or_components, "unet")
    te = _component(pipe_or_components, "text_encoder")
    if _component(pipe_or_components, "text_encoder_2") is not None:
        return "sdxl"
    if unet is not None and unet.config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if te is not None:
        return "sd2" if te.config.hidden_act == "gelu" else "sd1"
    if unet is not None:
        return "sd2" if unet.config.get("use_linear_projection") else "sd1"
    raise FileFormatError("cannot tell the model family: no UNet and no text encoder given")


def to_ldm_state_dict(pipe_or_components: Any, family: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of a diffusers SD1/SD2/SDXL pipeline in the original single-file layout.

    ``pipe_or_components``: a pipeline or a mapping with ``unet`` (required), ``vae``, ``text_encoder``,
    ``text_encoder_2``; components that are absent (or None) are left out.  ``family`` defaults to
    :func:`infer_pipeline_family`.  Tensors are the models' own (not copied) where the layout allows.
    """
    fam = family or infer_pipeline_family(pipe_or_components)
    if fam not in TEXT_PREFIXES:
        raise FileFormatError(f"unknown family {fam!r}; expected one of {', '.join(TEXT_PREFIXES)}")
    unet = _component(pipe_or_components, "unet")
    if unet is None:
        raise FileFormatError("to_ldm_state_dict needs a UNet (pipeline.unet or components['unet'])")
    sd = _unet_to_ldm(unet)
    vae = _component(pipe_or_components, "vae")
    if vae is not None:
        sd.update(_vae_to_ldm(vae))
    writers: dict[str, Callable[[torch.nn.Module, str], dict[str, torch.Tensor]]] = {
        CLIP_SD1: _clip_to_ldm, CLIP_SDXL: _clip_to_ldm,
        OPENCLIP_SD2: _openclip_to_ldm, OPENCLIP_SDXL: _openclip_to_ldm}
    for name, prefix in zip(("text_encoder", "text_encoder_2"), TEXT_PREFIXES[fam]):
        te = _component(pipe_or_components, name)
        if te is None:
            log.info("to_ldm_state_dict: no %s, leaving %s* out", name, prefix)
            continue
        sd.update(writers[prefix](te, prefix))
        if prefix == OPENCLIP_SD2:
            _pad_sd2_text_encoder(sd, te)
    return {k: v.detach() for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------- LDM -> diffusers
def _cast(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return value.to(dtype) if value.is_floating_point() else value


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {short_list(missing, 6)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {short_list(unexpected, 6)}")
    if shapes:
        parts.append(f"wrong shape {len(shapes)}: {short_list(shapes, 6)}")
    return "; ".join(parts)


def fit_problems(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str:
    """Empty when ``weights`` has exactly the keys and shapes of ``expected``, else what is wrong."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k} {tuple(weights[k].shape)} (model {tuple(expected[k].shape)})" for k in sorted(expected)
             if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    return _describe_mismatch(missing, unexpected, wrong)


def load_strict(make: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor], *, name: str, source: str,
                dtype: torch.dtype) -> torch.nn.Module:
    """Build a model with empty parameters and assign ``weights`` to it, checking every key and shape.

    Buffers the weights do not carry (e.g. CLIP position ids) keep their constructed values.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = make()
    params = {n for n, _ in model.named_parameters()}
    expected = {k: v for k, v in model.state_dict().items() if k in params or k in weights}
    problems = fit_problems(expected, weights)
    if problems:
        raise FileFormatError(f"{source}: the {name} weights do not fit the {name} architecture of the config "
                              f"({problems}); is the config (or family / prediction type) right for this file?")
    model.load_state_dict({k: _cast(v, dtype) for k, v in weights.items()}, strict=False, assign=True)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise FileFormatError(f"{source}: {name} parameters left unloaded: {short_list(still_meta, 6)}")
    return model.eval()


def unet_weights(checkpoint: dict[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet weights from an original-layout checkpoint (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(checkpoint, dict(config))


def vae_weights(checkpoint: dict[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights from an original-layout checkpoint (diffusers' converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(checkpoint, dict(config))


def build_unet(checkpoint: dict[str, torch.Tensor], config: Mapping[str, Any], *, source: str,
               dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return load_strict(lambda: UNet2DConditionModel.from_config(dict(config)), unet_weights(checkpoint, config),
                       name="unet", source=source, dtype=dtype)


def build_vae(checkpoint: dict[str, torch.Tensor], config: Mapping[str, Any], *, source: str,
              dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return load_strict(lambda: AutoencoderKL.from_config(dict(config)), vae_weights(checkpoint, config),
                       name="vae", source=source, dtype=dtype)


def _drop_extra_openclip_layers(checkpoint: dict[str, torch.Tensor], prefix: str, layers: int) -> dict:
    """Without the OpenCLIP blocks the config does not have (SD2 keeps one block fewer than OpenCLIP)."""
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")

    def keep(key: str) -> bool:
        m = pattern.match(key)
        return m is None or int(m[1]) < layers

    return {k: v for k, v in checkpoint.items() if k.startswith(prefix) and keep(k)}


def text_encoder_class(prefix: str) -> type:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection if prefix == OPENCLIP_SDXL else CLIPTextModel


def text_encoder_weights(checkpoint: dict[str, torch.Tensor], config: Any, prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIP text model weights from the keys under ``prefix`` (diffusers' converters)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    cls = text_encoder_class(prefix)
    if prefix == OPENCLIP_SD2:  # diffusers < 0.31 splits the fused attention at projection_dim without a projection
        config = copy.deepcopy(config)
        config.projection_dim = config.hidden_size
    with torch.device("meta"):
        shell = cls(config)
    if prefix in (CLIP_SD1, CLIP_SDXL):
        weights = convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(prefix)})
    else:
        part = _drop_extra_openclip_layers(checkpoint, prefix, config.num_hidden_layers)
        if prefix == OPENCLIP_SD2:  # SD2 uses no projection; diffusers' SD2 text encoder has none
            part.pop(prefix + "text_projection", None)
        weights = convert_open_clip_checkpoint(shell, part, prefix=prefix)
    if not hasattr(shell, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return {k: v for k, v in weights.items() if not k.endswith("position_ids")}


def build_text_encoder(checkpoint: dict[str, torch.Tensor], config: Any, prefix: str, *, source: str,
                       dtype: torch.dtype) -> torch.nn.Module:
    """CLIPTextModel (SD1, SD2, SDXL 1) or CLIPTextModelWithProjection (SDXL 2) from the keys under ``prefix``."""
    cls = text_encoder_class(prefix)
    name = "text_encoder_2" if prefix == OPENCLIP_SDXL else "text_encoder"
    return load_strict(lambda: cls(config), text_encoder_weights(checkpoint, config, prefix), name=name,
                       source=source, dtype=dtype)
