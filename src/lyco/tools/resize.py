"""``lyco resize IN -o OUT --rank R | --threshold T | --ratio Q | --quantile Q``: re-factor LoRA/LoCon to another
rank by SVD of ΔW, reporting the retained energy.

LoRA/LoCon files need nothing else (the SVD of up·down is computed exactly in O((O+I)·r²)).  Files with DoRA or
other algorithms are folded into ΔW = W' - W first, which needs the base model (``--base``).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import sd
from ..errors import ConfigError, FileFormatError
from ..io.files import group_by_module, model_hashes, read_file, write_file
from ..network import Network
from .args import add_common
from .lowrank import factor, lowrank_svd, select_rank
from .outputs import check_output

log = logging.getLogger("lyco")


@dataclass
class ResizeReport:
    layers: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # name -> (old rank, new rank, energy)
    total_energy: float = 0.0
    kept_energy: float = 0.0

    @property
    def retained(self) -> float:
        return self.kept_energy / self.total_energy if self.total_energy > 0 else 1.0

    def summary(self) -> str:
        return (f"{len(self.layers)} modules resized; retained energy {100 * self.retained:.3f}% "
                f"(relative Frobenius error {math.sqrt(max(0.0, 1 - self.retained)):.3e})")


def resize_lora_tensors(tensors: dict[str, torch.Tensor], mode: str, param: float,
                        progress: bool = False) -> tuple[dict[str, torch.Tensor], ResizeReport]:
    """Resize plain LoRA/LoCon (and Tucker LoCon) tensors without a model.  Output alpha = new rank (scale 1)."""
    out: dict[str, torch.Tensor] = {}
    rep = ResizeReport()
    for name, parts in tqdm(group_by_module(tensors).items(), desc="resize", disable=not progress):
        if not {"lora_up.weight", "lora_down.weight"} <= parts.keys():
            raise FileFormatError(f"module '{name}' is not LoRA/LoCon ({', '.join(sorted(parts))}); resize it with "
                                  "--base so it can be folded into ΔW first")
        if "dora_scale" in parts:
            raise FileFormatError(f"module '{name}' has DoRA; resize it with --base to fold the magnitude into ΔW")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        r = down.shape[0]
        alpha = float(parts["alpha"].float()) if "alpha" in parts else float(r)
        s = (alpha or r) / r
        o = up.shape[0]
        if "lora_mid.weight" in parts:  # Tucker: fold the core into the input factor
            mid = parts["lora_mid.weight"].float()
            k = mid.shape[2:]
            core = torch.einsum("pqk,qi->pik", mid.reshape(r, r, -1), down.reshape(r, -1))
            down_flat, kernel = core.reshape(r, -1), (down.shape[1], *k)
        else:
            down_flat, kernel = down.reshape(r, -1), down.shape[1:]
        U, S, Vh = lowrank_svd(up.reshape(o, r) * s, down_flat)
        new_r = select_rank(S, mode, param, min(len(S), o, down_flat.shape[1]))
        energy = float(S.pow(2).sum())
        kept = float(S[:new_r].pow(2).sum())
        rep.total_energy += energy
        rep.kept_energy += kept
        rep.layers[name] = (r, new_r, kept / energy if energy > 0 else 1.0)
        ones = (1,) * (up.dim() - 2)
        out[f"{name}.lora_up.weight"] = (U[:, :new_r] * S[:new_r]).reshape(o, new_r, *ones).contiguous()
        out[f"{name}.lora_down.weight"] = Vh[:new_r].reshape(new_r, *kernel).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(new_r))
    return out, rep


def resize_network(net: Network, mode: str, param: float,
                   progress: bool = False) -> tuple[dict[str, torch.Tensor], ResizeReport]:
    """Resize any attached network (DoRA and every algorithm folded into ΔW = W'(m) - W) to LoCon tensors."""
    out: dict[str, torch.Tensor] = {}
    rep = ResizeReport()
    for name, site in tqdm(list(net._sites.items()), desc="resize", disable=not progress):
        a = site.wrapper.adapter
        if a.geom.kind == "norm":
            raise FileFormatError(f"module '{name}' is a norm adapter; it has no rank to resize")
        raw = site.wrapper.raw_layer()
        W = raw.weight.detach()
        with torch.no_grad():
            W2, _ = a.adapted_weight(W, getattr(raw, "bias", None), a.multiplier)
        delta = W2.float() - W.float()
        f = factor(delta, mode, param, svd="full")
        norm2 = float(delta.pow(2).sum())
        rep.total_energy += norm2
        rep.kept_energy += norm2 * f.energy
        rep.layers[name] = (a.rank, f.rank, f.energy)
        out.update(f.locon_tensors(name, tuple(delta.shape)))
    return out, rep


def _mode(args: Any) -> tuple[str, float]:
    chosen = [(m, getattr(args, m)) for m in ("rank", "threshold", "ratio", "quantile") if getattr(args, m) is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --rank, --threshold, --ratio, --quantile")
    m, v = chosen[0]
    if m == "rank" and v < 1:
        raise ConfigError(f"--rank {v}: the new rank must be at least 1 (a rank-0 adapter changes nothing)")
    if m == "threshold" and v < 0:
        raise ConfigError(f"--threshold {v}: must be >= 0 (singular values below it are dropped)")
    if m == "ratio" and not 0 <= v <= 1:
        raise ConfigError(f"--ratio {v}: must be in [0, 1]")
    if m == "quantile" and not 0 < v <= 1:
        raise ConfigError(f"--quantile {v}: must be in (0, 1]")
    return ("fixed" if m == "rank" else m), float(v)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco resize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="LoRA/LoCon adapter file (.safetensors); other algorithms need --base")
    ap.add_argument("-o", "--output", required=True, help="the resized adapter file (.safetensors)")
    ap.add_argument("--rank", type=int, help="the same new rank R >= 1 for every module")
    ap.add_argument("--threshold", type=float, help="keep the singular values above T (per module)")
    ap.add_argument("--ratio", type=float, help="keep the singular values above Q·σ_max, Q in [0, 1]")
    ap.add_argument("--quantile", type=float, help="keep the smallest rank whose singular values reach Q of their "
                    "sum, Q in (0, 1]")
    ap.add_argument("--base", help="base model (needed for DoRA and non-LoRA algorithms)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                    help="dtype of the written factors (default fp16; alpha is always fp32)")
    add_common(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    mode, param = _mode(a)
    check_output(a.output, [a.input, a.base], overwrite=a.overwrite, suggest=Path(a.input).name)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    tensors, meta = read_file(a.input)
    if a.base:
        pipe = sd.load_pipeline(a.base, tokenizer=False)
        net = sd.load(pipe, a.input, strict=not a.ignore_unmatched)
        out, rep = resize_network(net, mode, param, progress=sys.stderr.isatty())
        net.detach()
    else:
        out, rep = resize_lora_tensors(tensors, mode, param, progress=sys.stderr.isatty())
    meta = dict(meta)
    meta.pop("sshs_model_hash", None)
    meta.pop("sshs_legacy_hash", None)
    meta["lyco.resized"] = f"{mode}={param}; retained energy {rep.retained:.6f}"
    cast = {k: (v.float() if k.endswith(".alpha") else v.to(dtype)).contiguous() for k, v in out.items()}
    if "ss_network_dim" in meta:
        ranks = sorted({r for _, r, _ in rep.layers.values()})
        meta["ss_network_dim"] = str(ranks[-1]) if ranks else meta["ss_network_dim"]
        meta["ss_network_alpha"] = meta["ss_network_dim"]
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(cast, meta)
    write_file(a.output, cast, meta)
    print(rep.summary())
    print(f"wrote {a.output}")
    return 0
