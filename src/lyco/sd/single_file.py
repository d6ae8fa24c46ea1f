"""Offline single-file Stable Diffusion checkpoints (SD1.x, SD2.x 512-eps / 768-v, SDXL base): load and save.

* :func:`load_single_file` reads an original-layout (LDM/SGM) ``.safetensors`` (or ``.ckpt``/``.pt`` through
  ``torch.load(weights_only=True)``) into a diffusers pipeline.  The architecture comes from the configs shipped
  in ``lyco/data/sd_configs`` (or ``config=``: a diffusers folder or a pipeline), the weights go through
  diffusers' converters, tokenizers from :mod:`lyco.sd.tokenizers`.  Nothing is ever downloaded.
* :func:`save_single_file` writes a pipeline back in the layout A1111 / ComfyUI / sd-scripts read
  (:func:`to_ldm_state_dict`); diffusers -> file -> diffusers is lossless.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from safetensors.torch import save_file

from ..builtin import DATA_DIR
from ..errors import ConfigError, FileFormatError
from ..io.atomic import atomic_path
from ..io.checkpoint import read_checkpoint
from .embedded import configs_from_metadata, pipeline_metadata, tokenizers_from_metadata
from .ldm_convert import (
    TEXT_PREFIXES,
    build_text_encoder,
    build_unet,
    build_vae,
    infer_pipeline_family,
    to_ldm_state_dict,
)
from .ldm_detect import CheckpointInfo, detect_family, inspect_checkpoint
from .tokenizers import ENV_VARS, resolve_tokenizer

__all__ = ["CheckpointInfo", "detect_family", "inspect_checkpoint", "load_single_file", "resolve_prediction_type",
           "save_single_file", "shipped_config_dir", "to_ldm_state_dict"]

log = logging.getLogger("lyco")

CONFIG_ROOT = DATA_DIR / "sd_configs"
_V_MARKERS = ("v_pred", "model.diffusion_model.v_pred")  # ComfyUI marks v-prediction checkpoints with this key
_PREDICTION_ALIASES = {"epsilon": "epsilon", "eps": "epsilon", "v_prediction": "v_prediction", "v": "v_prediction",
                       "v-prediction": "v_prediction"}
_ARCHITECTURES = {("sd1", "epsilon"): "stable-diffusion-v1", ("sd1", "v_prediction"): "stable-diffusion-v1",
                  ("sd2", "epsilon"): "stable-diffusion-v2-512", ("sd2", "v_prediction"): "stable-diffusion-v2-768-v",
                  ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base",
                  ("sdxl", "v_prediction"): "stable-diffusion-xl-v1-base"}
_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


# ---------------------------------------------------------------------------------------------------- configs
def shipped_config_dir(family: str, prediction_type: str = "epsilon") -> Path:
    """The shipped diffusers config folder (no weights, no tokenizers) for a family / SD2 prediction type."""
    names = {"sd1": "sd15", "sd2": "sd21-v" if prediction_type == "v_prediction" else "sd21-base", "sdxl": "sdxl"}
    if family not in names:
        raise ConfigError(f"unknown family {family!r}; expected one of {', '.join(names)}")
    return CONFIG_ROOT / names[family]


@dataclass
class _Configs:
    """Component configs of a pipeline, from a diffusers folder or a live pipeline."""

    origin: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: list[Any]  # transformers CLIPTextConfig per encoder
    scheduler_cls: Any  # a diffusers scheduler class
    scheduler: dict[str, Any]
    pipeline: dict[str, Any] = field(default_factory=dict)
    tokenizers: dict[int, Any] = field(default_factory=dict)  # from a pipeline given as config
    folder: Path | None = None


def _read_json(path: Path, origin: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileFormatError(f"config {origin}: {path} is missing "
                              "(expected a diffusers model folder: model_index.json, unet/, vae/, text_encoder/, ...)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _scheduler_class(name: str, origin: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type):
        raise FileFormatError(f"config {origin}: unknown scheduler class {name!r}")
    return cls


def _configs_from_folder(folder: Path, family: str) -> _Configs:
    from transformers import CLIPTextConfig

    origin = str(folder)
    if not folder.is_dir():
        raise FileFormatError(f"config {origin}: not a folder (expected a diffusers model folder or a pipeline)")
    names = ["text_encoder", "text_encoder_2"][: len(TEXT_PREFIXES[family])]
    for name in names:
        _read_json(folder / name / "config.json", origin)
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", origin)
    return _Configs(
        origin=origin, unet=_read_json(folder / "unet" / "config.json", origin),
        vae=_read_json(folder / "vae" / "config.json", origin),
        text_encoders=[CLIPTextConfig.from_pretrained(str(folder / n), local_files_only=True) for n in names],
        scheduler_cls=_scheduler_class(sched.get("_class_name", "DDIMScheduler"), origin), scheduler=sched,
        pipeline=_read_json(folder / "model_index.json", origin), folder=folder)


def _configs_from_pipeline(pipe: Any, family: str) -> _Configs:
    names = ["text_encoder", "text_encoder_2"][: len(TEXT_PREFIXES[family])]
    missing = [n for n in ["unet", "vae", "scheduler", *names] if getattr(pipe, n, None) is None]
    if missing:
        raise FileFormatError(f"config pipeline {type(pipe).__name__} lacks {', '.join(missing)} "
                              f"(a {family} pipeline is needed)")
    toks = {i + 1: getattr(pipe, t, None) for i, t in enumerate(["tokenizer", "tokenizer_2"][: len(names)])}
    return _Configs(
        origin=f"pipeline {type(pipe).__name__}", unet=dict(pipe.unet.config), vae=dict(pipe.vae.config),
        text_encoders=[getattr(pipe, n).config for n in names], scheduler_cls=type(pipe.scheduler),
        scheduler=dict(pipe.scheduler.config), pipeline=dict(getattr(pipe, "config", {}) or {}),
        tokenizers={i: t for i, t in toks.items() if t is not None})


# ---------------------------------------------------------------------------------------------- prediction type
def _normalise_prediction(value: str, what: str) -> str:
    key = str(value).strip().lower()
    if key not in _PREDICTION_ALIASES:
        raise ConfigError(f"{what}: unknown prediction type {value!r}; use 'epsilon' or 'v_prediction'")
    return _PREDICTION_ALIASES[key]


def prediction_evidence(keys: Any, metadata: dict[str, str], extras: dict[str, Any]) -> tuple[str, str] | None:
    """(prediction type, reason) when the file says which it is, else None."""
    if any(k in keys for k in _V_MARKERS):
        return "v_prediction", "the file has a 'v_pred' marker key"
    spec = metadata.get("modelspec.prediction_type")
    if spec and spec.strip().lower() in _PREDICTION_ALIASES:
        return _PREDICTION_ALIASES[spec.strip().lower()], f"metadata modelspec.prediction_type={spec!r}"
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true":
        return "v_prediction", "metadata ss_v_parameterization=True"
    if extras.get("global_step") == 875000:  # diffusers' heuristic: the final step of SD 2 base (512, epsilon)
        return "epsilon", "global_step 875000 (SD 2 base)"
    return None


def resolve_prediction_type(family: str, explicit: str | None, evidence: tuple[str, str] | None,
                            config_default: str | None = None, *, source: str = "checkpoint") -> str:
    """Argument, else evidence in the file, else the given config's scheduler, else the family default.

    The SD2 default is 768 v-prediction (logged as an assumption); SD1 and SDXL default to epsilon.
    """
    if explicit is not None:
        return _normalise_prediction(explicit, "prediction_type")
    if evidence is not None:
        log.info("%s: %s prediction (%s)", source, evidence[0], evidence[1])
        return evidence[0]
    if config_default is not None:
        return _normalise_prediction(config_default, "config scheduler")
    if family == "sd2":
        log.warning("%s: SD2 checkpoint without prediction-type evidence; assuming 768 v-prediction (SD 2.x 768). "
                    "Pass prediction_type='epsilon' for SD 2.x base (512) models.", source)
        return "v_prediction"
    return "epsilon"


# ------------------------------------------------------------------------------------------------------ loading
@overload
def _resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype) -> torch.dtype: ...


@overload
def _resolve_dtype(dtype: torch.dtype | str | None, default: None) -> torch.dtype | None: ...


def _resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise ConfigError(f"unknown dtype {dtype!r}; use torch.float16, torch.bfloat16, torch.float32 or 'fp16'/'bf16'")


def _configs_from_file(metadata: dict[str, str], family: str, source: str) -> _Configs | None:
    """The configs (and custom tokenizers) a lyco-written file records about itself (see :mod:`.embedded`)."""
    rec = configs_from_metadata(metadata)
    if rec is None or len(rec["text_encoders"]) != len(TEXT_PREFIXES[family]) or not rec["scheduler"]:
        return None
    sched = dict(rec["scheduler"])
    return _Configs(origin=f"{source} (its own metadata)", unet=rec["unet"], vae=rec["vae"],
                    text_encoders=rec["text_encoders"],
                    scheduler_cls=_scheduler_class(sched.get("_class_name", "DDIMScheduler"), source), scheduler=sched,
                    pipeline={"force_zeros_for_empty_prompt": rec.get("force_zeros_for_empty_prompt", True)},
                    tokenizers=tokenizers_from_metadata(metadata))


def _pick_configs(config: Any, family: str, explicit_pt: str | None, evidence: tuple[str, str] | None,
                  source: str, metadata: dict[str, str] | None = None) -> tuple[_Configs, str]:
    own = _configs_from_file(metadata, family, source) if config is None and metadata else None
    if own is not None:
        return own, resolve_prediction_type(family, explicit_pt, evidence, own.scheduler.get("prediction_type"),
                                            source=source)
    if config is None:
        pt = resolve_prediction_type(family, explicit_pt, evidence, source=source)
        cfg = _configs_from_folder(shipped_config_dir(family, pt), family)
        cfg.folder = None  # shipped configs carry no tokenizers: nothing to search there
        return cfg, pt
    if isinstance(config, (str, os.PathLike)):
        cfg = _configs_from_folder(Path(config).expanduser(), family)
    else:
        cfg = _configs_from_pipeline(config, family)
    return cfg, resolve_prediction_type(family, explicit_pt, evidence, cfg.scheduler.get("prediction_type"),
                                        source=source)


def _require_components(info: CheckpointInfo, family: str, source: str) -> None:
    want = {"first_stage_model.* (VAE)": info.has_vae}
    for prefix in TEXT_PREFIXES[family]:
        want[f"{prefix}* (text encoder)"] = prefix in info.text_encoders
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise FileFormatError(f"{source}: not a full {family} checkpoint: no {', '.join(missing)}; lyco loads "
                              "complete single-file checkpoints (UNet + VAE + text encoders)")


def _tokenizers(family: str, cfg: _Configs, tokenizer: Any, tokenizer_2: Any) -> dict[str, Any]:
    if family != "sdxl":
        tokenizer_2 = False
    elif tokenizer is False and tokenizer_2 is None:
        tokenizer_2 = False  # tokenizer=False alone means: no tokenizers at all
    local = [cfg.folder] if cfg.folder is not None else []
    out = {}
    for which, (name, explicit) in enumerate((("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)), start=1):
        if explicit is False:
            continue
        if explicit is None and which in cfg.tokenizers and not os.environ.get(ENV_VARS[which]):
            explicit = cfg.tokenizers[which]  # the config pipeline's own, after the env var as for folders
        out[name] = resolve_tokenizer(family, which, explicit, local_dirs=local)
    return out


def _make_pipeline(family: str, parts: dict[str, Any], cfg: _Configs) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        force_zeros = bool(cfg.pipeline.get("force_zeros_for_empty_prompt", True))
        return StableDiffusionXLPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts.get("tokenizer"), tokenizer_2=parts.get("tokenizer_2"), unet=parts["unet"],
            scheduler=parts["scheduler"], force_zeros_for_empty_prompt=force_zeros)
    return StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts.get("tokenizer"), unet=parts["unet"],
        scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load_single_file(path: str | os.PathLike, *, family: str | None = None, prediction_type: str | None = None,
                     tokenizer: Any = None, tokenizer_2: Any = None, torch_dtype: torch.dtype | str | None = None,
                     config: Any = None) -> Any:
    """A diffusers pipeline from an original-layout SD1.x / SD2.x / SDXL-base single-file checkpoint, offline.

    * ``family``: "sd1" | "sd2" | "sdxl"; detected from the keys when None (and checked against them when given).
    * ``prediction_type``: "epsilon" | "v_prediction".  SD2: picks the 768-v or the 512-base config; default from
      the file ('v_pred' key, modelspec metadata, global_step), else 768 v-prediction (logged).
    * ``tokenizer`` / ``tokenizer_2``: None searches (env var, config folder, HF cache; see
      :func:`~lyco.sd.tokenizers.resolve_tokenizer`), a path or tokenizer object is used as is, ``False`` builds the
      pipeline without that tokenizer (``tokenizer=False`` alone: without both).
    * ``torch_dtype``: dtype of the models (default float32).
    * ``config``: a diffusers model folder or a pipeline supplying the architecture (default: the configs a
      lyco-written file records about itself (:mod:`lyco.sd.embedded`), else lyco's shipped real SD configs);
      needed for non-standard sizes written by other tools.
    """
    p = Path(path)
    tensors, metadata, extras = read_checkpoint(p)
    source = str(p)
    info = inspect_checkpoint(tensors, family=family, source=source)
    fam = info.family
    _require_components(info, fam, source)
    evidence = prediction_evidence(tensors, metadata, extras)
    cfg, pt = _pick_configs(config, fam, prediction_type, evidence, source, metadata)
    dtype = _resolve_dtype(torch_dtype, torch.float32)
    parts: dict[str, Any] = _tokenizers(fam, cfg, tokenizer, tokenizer_2)  # fail fast, before building models
    log.info("loading %s as %s (%s) with configs from %s", source, fam, pt, cfg.origin)
    parts["unet"] = build_unet(tensors, cfg.unet, source=source, dtype=dtype)
    parts["vae"] = build_vae(tensors, cfg.vae, source=source, dtype=dtype)
    for name, prefix, te_cfg in zip(("text_encoder", "text_encoder_2"), TEXT_PREFIXES[fam], cfg.text_encoders):
        parts[name] = build_text_encoder(tensors, te_cfg, prefix, source=source, dtype=dtype)
    del tensors
    sched_cfg = {k: v for k, v in cfg.scheduler.items() if not k.startswith("_")}
    parts["scheduler"] = cfg.scheduler_cls.from_config({**sched_cfg, "prediction_type": pt})
    return _make_pipeline(fam, parts, cfg)


# ------------------------------------------------------------------------------------------------------- saving
def _default_metadata(family: str, prediction_type: str) -> dict[str, str]:
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": _ARCHITECTURES[family, prediction_type],
            "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon"}


def _prepare(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None, target: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise FileFormatError(f"{target}: refusing to write key '{key}': it contains NaN or Inf")
            if dtype is not None:
                t = t.to(dtype)
        out[key] = t.detach().to("cpu").contiguous()
    return out


def save_single_file(pipe: Any, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                     metadata: dict[str, str] | None = None, *, family: str | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``pipe`` as an original-layout single-file ``.safetensors`` (A1111 / ComfyUI / sd-scripts layout).

    ``dtype`` casts floating tensors (default: as they are).  ``metadata`` (str -> str) is added to the modelspec
    architecture / prediction-type entries lyco writes.  v-prediction pipelines also get ComfyUI's ``v_pred``
    marker key.  The architecture configs (and a non-standard tokenizer) are recorded under ``lyco.*`` keys so the
    file loads again without a config (:mod:`lyco.sd.embedded`).  Refuses to replace an existing file unless
    ``overwrite=True``; writes atomically.
    """
    target = Path(path)
    if target.suffix.lower() != ".safetensors":
        raise FileFormatError(f"{target}: lyco writes single-file checkpoints as .safetensors only")
    if target.exists() and not overwrite:
        raise FileFormatError(f"{target} already exists; pass overwrite=True to replace it (never the file you "
                              "are still reading from)")
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise FileFormatError(f"{target}: metadata keys and values must be strings; not for {bad[:3]}")
    fam = family or infer_pipeline_family(pipe)
    scheduler = getattr(pipe, "scheduler", None)
    pt = str(scheduler.config.get("prediction_type", "epsilon")) if scheduler is not None else "epsilon"
    pt = _PREDICTION_ALIASES.get(pt, "epsilon")
    tensors = to_ldm_state_dict(pipe, fam)
    if pt == "v_prediction":
        tensors["v_pred"] = torch.zeros(0)
    prepared = _prepare(tensors, _resolve_dtype(dtype, None), target)
    with atomic_path(target) as tmp:       # streamed by safetensors into a temp file, renamed into place
        save_file(prepared, str(tmp), metadata={**_default_metadata(fam, pt), **pipeline_metadata(pipe), **meta})
    log.info("saved %s single file %s (%d tensors)", fam, target, len(tensors))
    return target
