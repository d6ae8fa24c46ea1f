"""Which loaders compute an adapter file exactly: a support matrix (feature × client, below) plus a per-module
classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..algos import registry
from ..io.files import group_by_module

CLIENTS = ("ComfyUI", "A1111", "Forge", "InvokeAI", "diffusers", "sd-scripts", "lycoris-lora")
OK, APPROX, IGNORED, ERROR = "exact", "approximate", "ignored", "error"
_RANK = {OK: 0, APPROX: 1, IGNORED: 2, ERROR: 3}


@dataclass(frozen=True)
class Verdict:
    level: str
    reason: str = ""


def _row(*levels: str) -> dict[str, str]:
    return dict(zip(CLIENTS, levels))


# feature -> client -> level: the support matrix
MATRIX: dict[str, dict[str, str]] = {
    "lora": _row(OK, OK, OK, OK, OK, OK, OK),
    "locon-tucker": _row(OK, OK, OK, OK, ERROR, IGNORED, OK),
    "loha": _row(OK, OK, OK, OK, ERROR, IGNORED, OK),
    "lokr": _row(OK, OK, OK, OK, ERROR, IGNORED, OK),
    "lokr-tucker-conv": _row(ERROR, OK, ERROR, OK, ERROR, IGNORED, ERROR),
    "dora-in": _row(OK, OK, OK, OK, APPROX, IGNORED, OK),
    "dora-in-not-lora": _row(OK, OK, OK, ERROR, APPROX, IGNORED, OK),
    "dora-out": _row(APPROX, APPROX, APPROX, APPROX, APPROX, IGNORED, OK),
    "dora-1d": _row(ERROR, ERROR, ERROR, ERROR, APPROX, IGNORED, OK),
    "diag-oft": _row(OK, OK, IGNORED, ERROR, ERROR, IGNORED, OK),
    "diag-oft-constraint": _row(APPROX, OK, IGNORED, ERROR, ERROR, IGNORED, OK),
    "diag-oft-rescale": _row(APPROX, OK, IGNORED, ERROR, ERROR, IGNORED, OK),
    "boft": _row(OK, OK, IGNORED, ERROR, ERROR, IGNORED, OK),
    "glora": _row(OK, ERROR, OK, ERROR, ERROR, IGNORED, OK),
    "ia3": _row(IGNORED, OK, IGNORED, OK, ERROR, IGNORED, ERROR),
    "full": _row(OK, OK, OK, OK, ERROR, IGNORED, OK),
    "norm": _row(OK, OK, OK, OK, ERROR, IGNORED, OK),
    "norm-te": _row(IGNORED, OK, OK, OK, ERROR, IGNORED, OK),
    "sdxl-diffusers-names": _row(OK, APPROX, OK, OK, OK, OK, OK),
}
REASONS = {
    "locon-tucker": "diffusers' load_lora_weights rejects lora_mid keys; sd-scripts' own loader ignores them",
    "loha": "diffusers and sd-scripts' own loader have no LoHa",
    "lokr": "diffusers and sd-scripts' own loader have no LoKr",
    "lokr-tucker-conv": "ComfyUI/Forge skip LoKr layers with lokr_t2 on convs; lycoris-lora 4.1.3 reads the rank wrongly",
    "dora-in": "diffusers drops dora_scale (magnitude lost)",
    "dora-in-not-lora": "InvokeAI applies DoRA to LoRA only and raises on LoHa/LoKr + DoRA",
    "dora-out": "UIs apply output-axis dora_scale with the input-axis convention (ComfyUI ≈26%, A1111 ≈36%, InvokeAI ≈82% error)",
    "dora-1d": "1-D dora_scale hits a broadcast bug in the UIs",
    "diag-oft": "OFT loads only in ComfyUI and A1111; InvokeAI rejects the whole file",
    "diag-oft-constraint": "ComfyUI compares ‖Q‖ with α instead of α·O",
    "diag-oft-rescale": "ComfyUI ignores rescale for diag-OFT",
    "boft": "BOFT loads only in ComfyUI and A1111",
    "glora": "A1111 errors per GLoRA layer; InvokeAI rejects the whole file",
    "ia3": "(IA)³ loads in A1111 and InvokeAI only; ComfyUI warns 'lora key not loaded'",
    "full": "diffusers has no full-diff loader",
    "norm": "diffusers has no norm adapters",
    "norm-te": "ComfyUI has no kohya names for text-encoder norms",
    "sdxl-diffusers-names": "A1111 maps the SDXL up_blocks_0 upsampler to the wrong layer",
}


def features(name: str, parts: dict[str, torch.Tensor]) -> list[str]:
    """The support-matrix features one module uses."""
    cls = registry.detect(parts)
    if cls is None:
        return []
    algo = cls.algo
    out: list[str] = []
    if algo == "lora":
        out.append("locon-tucker" if "lora_mid.weight" in parts else "lora")
    elif algo == "lokr":
        conv_tucker = "lokr_t2" in parts
        out.append("lokr-tucker-conv" if conv_tucker else "lokr")
    elif algo == "diag-oft":
        out.append("diag-oft")
        if "alpha" in parts and float(parts["alpha"].float()) > 0:
            out.append("diag-oft-constraint")
        if "rescale" in parts:
            out.append("diag-oft-rescale")
    elif algo == "boft":
        out.append("boft")
    elif algo == "norm":
        out.append("norm-te" if name.startswith("lora_te") else "norm")
    else:
        out.append(algo)
    if "dora_scale" in parts:
        ds = parts["dora_scale"]
        if ds.dim() == 1:
            out.append("dora-1d")
        elif ds.shape[0] == 1 and ds.dim() >= 2 and ds.shape[1] > 1:
            out.append("dora-in" if algo == "lora" else "dora-in-not-lora")
        else:
            out.append("dora-out")
    return out


def verdicts(groups: dict[str, dict[str, torch.Tensor]], sdxl_diffusers_names: bool = False) -> dict[str, Verdict]:
    """Per client: the worst level over every module's features, with the reasons."""
    used: dict[str, int] = {}
    for name, parts in groups.items():
        for f in features(name, parts):
            used[f] = used.get(f, 0) + 1
    if sdxl_diffusers_names:
        used["sdxl-diffusers-names"] = 1
    out = {}
    for client in CLIENTS:
        level, reasons = OK, []
        for f, n in used.items():
            lv = MATRIX[f][client]
            if lv != OK:
                reasons.append(f"{f} ({n} modules): {REASONS.get(f, lv)}")
            if _RANK[lv] > _RANK[level]:
                level = lv
        out[client] = Verdict(level, "; ".join(reasons))
    return out


group = group_by_module