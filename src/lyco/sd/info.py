"""What kind of Stable Diffusion model a pipeline is, and the metadata UIs read from adapter files."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from .naming import _cfg

_ARCH = {
    ("sd1", "epsilon"): ("sd_v1", "stable-diffusion-v1/lora"),
    ("sd1", "v_prediction"): ("sd_v1_v", "stable-diffusion-v1/lora"),
    ("sd2", "epsilon"): ("sd_v2", "stable-diffusion-v2-512/lora"),
    ("sd2", "v_prediction"): ("sd_v2_v", "stable-diffusion-v2-768-v/lora"),
    ("sdxl", "epsilon"): ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    ("sdxl", "v_prediction"): ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
}
SGM_URL = "https://github.com/Stability-AI/generative-models"


@dataclass(frozen=True)
class ModelInfo:
    """family: 'sd1' | 'sd2' | 'sdxl' (SD-architecture models of other sizes, like lyco-tiny, report the family
    whose layout they follow); prediction_type: 'epsilon' | 'v_prediction'; resolution: native image side."""

    family: str
    prediction_type: str
    resolution: int
    name: str = ""

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def v2(self) -> bool:
        return self.family == "sd2"

    def describe(self) -> str:
        return f"{self.name or 'model'}: {self.family}, {self.prediction_type}, {self.resolution}x{self.resolution}"


def unet_family(unet_config: Any) -> str:
    if _cfg(unet_config, "addition_embed_type") == "text_time":
        return "sdxl"
    if _cfg(unet_config, "use_linear_projection", False) or _cfg(unet_config, "cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def model_info(pipe: Any, name: str = "") -> ModelInfo:
    unet = pipe.unet
    family = unet_family(unet.config)
    sched = getattr(pipe, "scheduler", None)
    pred = _cfg(sched.config, "prediction_type", "epsilon") if sched is not None else "epsilon"
    vae = getattr(pipe, "vae", None)
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    res = int(_cfg(unet.config, "sample_size", 64)) * factor
    if not name:
        name = str(_cfg(unet.config, "_name_or_path", "") or "")
    return ModelInfo(family, pred, res, name)


def adapter_metadata(info: ModelInfo, title: str = "") -> dict[str, str]:
    """``ss_*`` base-model keys and SAI ModelSpec keys for an adapter trained on ``info``."""
    prediction = info.prediction_type if info.prediction_type in ("epsilon", "v_prediction") else "epsilon"
    base_version, arch = _ARCH[(info.family, prediction)]
    meta = {
        "ss_base_model_version": base_version,
        "ss_v2": str(info.family == "sd2"),
        "ss_resolution": f"({info.resolution}, {info.resolution})",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": arch,
        "modelspec.implementation": SGM_URL if info.is_sdxl else "diffusers",
        "modelspec.resolution": f"{info.resolution}x{info.resolution}",
        "modelspec.date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": info.prediction_type,
    }
    if info.name:
        meta["ss_sd_model_name"] = info.name
    if title:
        meta["modelspec.title"] = title
    return meta
