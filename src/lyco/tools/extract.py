"""``lyco extract BASE TUNED -o OUT``: LoCon extraction from a fine-tuned model by SVD of ΔW = W_tuned - W_base.

Per-layer rank by ``fixed``, ``threshold``, ``ratio`` or ``quantile`` of the singular values (linear and conv
separately), optional Tucker for convs, randomised SVD for small fixed ranks; reconstruction error reported per
layer and overall.  Works on SD1/SD2/SDXL pipelines (UNet and text encoders, kohya names) and on any pair of
PyTorch models with the same architecture.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import sd
from ..config import AdapterConfig
from ..errors import ConfigError, TargetError, did_you_mean
from ..inject import Root, layer_of, select_targets
from ..network import network_from_tensors
from .args import add_common, add_option
from .lowrank import MODES, factor
from .outputs import check_output

log = logging.getLogger("lyco")


@dataclass
class ExtractOptions:
    mode: str = "fixed"
    linear_dim: int = 64
    conv_dim: int = 32
    linear_threshold: float = 0.0
    conv_threshold: float = 0.0
    linear_ratio: float = 1.0
    conv_ratio: float = 1.0
    linear_quantile: float = 1.0
    conv_quantile: float = 1.0
    use_tucker: bool = False
    svd: str = "auto"  # auto | full | randomized
    preset: str | None = None  # None: "full" for SD pipelines, "all" (every Linear/Conv) for other models
    text_encoder: bool = True
    min_diff: float = 1e-7  # layers whose ‖ΔW‖ is below this (relative to ‖W‖) are skipped
    full_when_cheaper: bool = True  # write an exact `full` diff when LoCon would need as many parameters

    def param(self, conv: bool) -> float:
        side = "conv" if conv else "linear"
        key = {"fixed": "dim", "threshold": "threshold", "ratio": "ratio", "quantile": "quantile"}[self.mode]
        return getattr(self, f"{side}_{key}")


@dataclass
class LayerReport:
    name: str
    kind: str  # locon | tucker | full
    rank: int
    rel_error: float
    delta_norm: float


@dataclass
class ExtractReport:
    layers: list[LayerReport] = field(default_factory=list)
    skipped_unchanged: int = 0
    bias_changed: list[str] = field(default_factory=list)

    @property
    def overall_rel_error(self) -> float:
        num = sum((layer.rel_error * layer.delta_norm) ** 2 for layer in self.layers)
        den = sum(layer.delta_norm ** 2 for layer in self.layers)
        return math.sqrt(num / den) if den > 0 else 0.0

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for layer in self.layers:
            kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        return (f"{len(self.layers)} layers extracted ({', '.join(f'{k} x{v}' for k, v in kinds.items())}), "
                f"{self.skipped_unchanged} unchanged skipped; overall relative error {self.overall_rel_error:.3e}")


def _pairs(base_roots: list[Root], tuned_roots: list[Root], cfg: AdapterConfig):
    by_prefix = {r.prefix: r for r in tuned_roots}
    for t in select_targets(base_roots, cfg):
        if t.geom.kind == "norm":
            continue
        other = by_prefix[t.root.prefix].module
        try:
            tuned_layer = layer_of(other.get_submodule(t.path))
        except AttributeError:
            raise TargetError(f"the tuned model has no module '{t.path}' ({t.root.prefix}); both models must share "
                              "the same architecture") from None
        yield t, layer_of(t.module), tuned_layer


@torch.no_grad()
def extract_tensors(base_roots: list[Root], tuned_roots: list[Root], opts: ExtractOptions,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor], ExtractReport]:
    """kohya/LyCORIS tensors (fp32) of the LoCon extraction and a per-layer report."""
    if opts.mode not in MODES:
        raise ConfigError(f"unknown extraction mode {opts.mode!r}; valid: {', '.join(MODES)}")
    cfg = AdapterConfig(preset=opts.preset or ("full" if base_roots[0].family else "all"))
    tensors: dict[str, torch.Tensor] = {}
    report = ExtractReport()
    pairs = list(_pairs(base_roots, tuned_roots, cfg))
    for t, base_layer, tuned_layer in tqdm(pairs, desc="extract", disable=not progress):
        W0, W1 = base_layer.weight.float(), tuned_layer.weight.float()
        if W0.shape != W1.shape:
            raise TargetError(f"{t.name}: base weight {tuple(W0.shape)} vs tuned {tuple(W1.shape)}")
        b0, b1 = getattr(base_layer, "bias", None), getattr(tuned_layer, "bias", None)
        if b0 is not None and b1 is not None and not torch.equal(b0, b1):
            report.bias_changed.append(t.name)
        delta = W1 - W0
        dn = float(delta.norm())
        if dn <= opts.min_diff * max(float(W0.norm()), 1e-12):
            report.skipped_unchanged += 1
            continue
        conv = t.geom.kind == "conv" and t.geom.has_spatial_kernel
        f = factor(delta, opts.mode, opts.param(conv), tucker=opts.use_tucker and conv, svd=opts.svd)
        o, fan = delta.shape[0], delta[0].numel()
        locon_params = f.rank * (o + fan) if f.mid is None else f.rank * (o + delta.shape[1]) + f.mid.numel()
        if opts.full_when_cheaper and locon_params >= o * fan:
            tensors[f"{t.name}.diff"] = delta.contiguous()
            report.layers.append(LayerReport(t.name, "full", min(o, fan), 0.0, dn))
            continue
        tensors.update(f.locon_tensors(t.name, tuple(delta.shape)))
        report.layers.append(LayerReport(t.name, "tucker" if f.mid is not None else "locon", f.rank, f.rel_error, dn))
    if report.bias_changed:
        log.warning("lyco extract: %d layers also changed their bias, which LoCon cannot represent (first: %s)",
                    len(report.bias_changed), report.bias_changed[0])
    return tensors, report


def extract(base: Any, tuned: Any, out: str | None = None, *, dtype: torch.dtype | None = torch.float16,
            progress: bool = True, overwrite: bool = False, **options: Any) -> tuple[Any, ExtractReport]:
    """Extract LoCon from ``tuned`` relative to ``base`` (two SD pipelines or model paths, or two nn.Modules).

    Returns (Network attached to ``base``, report); writes ``out`` when given (an existing ``out`` only with
    ``overwrite=True``, never one of the inputs).  Options: see ExtractOptions.
    """
    if out is not None:
        check_output(out, [m for m in (base, tuned) if isinstance(m, (str, os.PathLike))], overwrite=overwrite,
                     suggest="extracted.safetensors")
    bad = set(options) - set(ExtractOptions.__dataclass_fields__)
    if bad:
        k = sorted(bad)[0]
        raise ConfigError(f"unknown extract option {k!r}{did_you_mean(k, ExtractOptions.__dataclass_fields__)}")
    opts = ExtractOptions(**options)
    base_roots, tuned_roots, meta = _roots(base, tuned, opts)
    tensors, report = extract_tensors(base_roots, tuned_roots, opts, progress)
    if not tensors:
        raise TargetError("the two models are identical on every targeted layer: nothing to extract")
    net = network_from_tensors(tensors, base_roots, source="extraction")
    net.base_metadata.update(meta)
    if out is not None:
        args = {"algo": "locon", "extracted": "True", **{k: str(v) for k, v in asdict(opts).items()}}
        layers = {x.name: [x.kind, x.rank, round(x.rel_error, 6)] for x in report.layers}
        net.save(out, dtype=dtype, metadata={
            "ss_network_args": json.dumps(args),
            "lyco.extract_report": json.dumps({"overall_rel_error": report.overall_rel_error, "layers": layers}),
        })
    return net, report


def _roots(base: Any, tuned: Any, opts: ExtractOptions) -> tuple[list[Root], list[Root], dict[str, str]]:
    if isinstance(base, nn.Module) and isinstance(tuned, nn.Module):
        return [Root("lycoris", base)], [Root("lycoris", tuned)], {}
    if not hasattr(base, "unet"):
        base = sd.load_pipeline(base, tokenizer=False)
    if not hasattr(tuned, "unet"):
        tuned = sd.load_pipeline(tuned, tokenizer=False)
    meta = sd.adapter_metadata(sd.model_info(base))
    return (sd.roots(base, text_encoder=opts.text_encoder), sd.roots(tuned, text_encoder=opts.text_encoder), meta)


OPTION_HELP = {
    "mode": "how each layer's rank is chosen from its singular values (default fixed)",
    "dim": "fixed: the rank of {side} layers (default {default})",
    "threshold": "threshold: keep the singular values of {side} layers above this",
    "ratio": "ratio: keep the singular values of {side} layers above this fraction of the largest",
    "quantile": "quantile: keep the smallest rank of {side} layers whose singular values reach this fraction of "
                "their sum",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco extract", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="base model: diffusers folder, single file, or builtin:tiny")
    ap.add_argument("tuned", help="the fine-tuned model (same architecture as the base)")
    ap.add_argument("-o", "--output", required=True, help="the extracted adapter file (.safetensors)")
    ap.add_argument("--mode", choices=MODES, default="fixed", help=OPTION_HELP["mode"])
    for side, dim in (("linear", 64), ("conv", 32)):
        words = "linear (and 1x1 conv)" if side == "linear" else "k×k conv"
        add_option(ap, f"--{side}-dim", type=int, default=dim,
                   help=OPTION_HELP["dim"].format(side=words, default=dim))
        add_option(ap, f"--{side}-threshold", type=float, default=0.0,
                   help=OPTION_HELP["threshold"].format(side=words))
        add_option(ap, f"--{side}-ratio", type=float, default=1.0, help=OPTION_HELP["ratio"].format(side=words))
        add_option(ap, f"--{side}-quantile", type=float, default=1.0,
                   help=OPTION_HELP["quantile"].format(side=words))
    add_option(ap, "--use-tucker", action="store_true", help="Tucker-decompose k×k convs (lora_mid)")
    ap.add_argument("--svd", choices=("auto", "full", "randomized"), default="auto",
                    help="SVD algorithm (auto: randomised for small fixed ranks of large layers)")
    ap.add_argument("--preset", default=None, help="which layers to extract (a preset name; default full)")
    add_option(ap, "--no-text-encoder", action="store_true", help="extract the UNet only")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                    help="dtype of the written factors (default fp16)")
    add_common(ap, unmatched=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[a.dtype]
    kw = {k: getattr(a, k) for k in ExtractOptions.__dataclass_fields__ if hasattr(a, k)}
    kw["text_encoder"] = not a.no_text_encoder
    net, report = extract(a.base, a.tuned, a.output, dtype=dtype, overwrite=a.overwrite,
                          progress=sys.stderr.isatty(), **kw)
    print(report.summary())
    worst = sorted(report.layers, key=lambda x: -x.rel_error)[:5]
    for layer in worst:
        print(f"  {layer.name}: {layer.kind} rank {layer.rank}, relative error {layer.rel_error:.3e}")
    print(f"wrote {a.output}")
    return 0
