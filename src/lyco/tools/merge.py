"""``lyco merge BASE ADAPTER[:WEIGHT] ... -o OUT``: bake adapters into a checkpoint, or merge adapters into one.

* Into a checkpoint (default): every adapter (any algorithm) is applied at its weight, UNet and text-encoder
  strengths separately (``--unet-weight``, ``--te-weight``), and the result is written as a single-file
  checkpoint (``.safetensors``) or a diffusers folder (any other path).
* ``--adapter``: several adapters become one adapter file.  Where every contribution to a layer is plain LoRA the
  ranks are concatenated (exact); otherwise the summed ΔW is written as an exact ``full`` diff, or with
  ``--rank R`` factorised by SVD to rank R (errors reported).
The input files are never overwritten.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import sd
from ..errors import ConfigError, MissingTokenizerError
from ..network import Network, network_from_tensors
from .args import add_common, add_option
from .lowrank import factor
from .outputs import check_output, staged_folder

log = logging.getLogger("lyco")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}


def parse_adapter_arg(s: str) -> tuple[str, float]:
    """``path[:weight]`` (a trailing ``:number`` is the weight; Windows drive letters are kept)."""
    head, sep, tail = s.rpartition(":")
    if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return s, 1.0


def _inputs(base: str, adapters: list[tuple[str, float]]) -> list[str]:
    return [base] + [p for p, _ in adapters]


def _load_base(base: str, *, single_out: bool) -> Any:
    """The base pipeline; its tokenizers too when they are at hand (a single-file output carries small custom ones,
    so the merged checkpoint of ``builtin:tiny`` loads again), else without them (merging never needs them)."""
    if not single_out:
        return sd.load_pipeline(base)
    try:
        return sd.load_pipeline(base)
    except MissingTokenizerError:
        return sd.load_pipeline(base, tokenizer=False)


def merge_into_pipeline(pipe: Any, adapters: list[tuple[str, float]], *, unet_weight: float = 1.0,
                        te_weight: float = 1.0, strict: bool = True) -> list[Network]:
    """Bake adapters into ``pipe`` in order (each at weight·unet_weight / weight·te_weight)."""
    nets = []
    for path, w in tqdm(adapters, desc="merge", disable=len(adapters) < 2 or not sys.stderr.isatty()):
        net = sd.load(pipe, path, multiplier=w, strict=strict)
        net.set_multiplier(w * unet_weight, prefix="lora_unet")
        net.set_multiplier(w * te_weight, prefix="lora_te")
        net.bake()
        nets.append(net)
    return nets


def merge_into_checkpoint(base: str, adapters: list[tuple[str, float]], out: str, *, unet_weight: float = 1.0,
                          te_weight: float = 1.0, dtype: str | None = None, overwrite: bool = False,
                          strict: bool = True) -> str:
    """Bake ``adapters`` into ``base`` and write a single file (``.safetensors``) or a diffusers folder.

    Refuses an existing ``out`` unless ``overwrite`` and any ``out`` that is an input; a failed run writes nothing.
    """
    single = Path(out).suffix.lower() == ".safetensors"
    check_output(out, _inputs(base, adapters), overwrite=overwrite, folder=not single,
                 suggest="merged.safetensors")
    pipe = _load_base(base, single_out=single)
    merge_into_pipeline(pipe, adapters, unet_weight=unet_weight, te_weight=te_weight, strict=strict)
    torch_dtype = DTYPES[dtype]
    if single:
        sd.save_single_file(pipe, out, dtype=torch_dtype, overwrite=overwrite,
                         metadata={"lyco.merged_from": json.dumps([[base, 1.0]] + [[p, w] for p, w in adapters])})
    else:
        if torch_dtype is not None:
            pipe.to(torch_dtype)
        with staged_folder(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    return out


@dataclass
class AdapterMergeReport:
    concatenated: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    svd: dict[str, float] = field(default_factory=dict)  # name -> relative error

    def summary(self) -> str:
        s = f"{len(self.concatenated)} layers concatenated (exact), {len(self.full)} written as full diffs (exact)"
        if self.svd:
            worst = max(self.svd.values())
            s += f", {len(self.svd)} factorised by SVD (worst relative error {worst:.3e})"
        return s


def merge_adapter_networks(nets: list[tuple[Network, float]], roots, rank: int | None = None,
                           ) -> tuple[dict[str, torch.Tensor], AdapterMergeReport]:
    """One adapter's tensors from several attached networks (each with a weight)."""
    rep = AdapterMergeReport()
    per_site: dict[str, list[tuple[Any, float]]] = {}
    for net, w in nets:
        for name, site in net._sites.items():
            per_site.setdefault(name, []).append((site, w))
    out: dict[str, torch.Tensor] = {}
    for name, contribs in per_site.items():
        adapters = [(s.wrapper.adapter, w) for s, w in contribs]
        if all(a.algo == "lora" and a.dora_axis is None and a.lora_mid is None for a, _ in adapters):
            ups, downs = [], []
            for a, w in adapters:
                ups.append(a.lora_up.detach().float() * (a.t().detach() * w))
                downs.append(a.lora_down.detach().float())
            up, down = torch.cat(ups, 1), torch.cat(downs, 0)
            r = down.shape[0]
            ones = (1,) * (down.dim() - 2)
            out[f"{name}.lora_up.weight"] = up.reshape(up.shape[0], r, *ones)
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.alpha"] = torch.tensor(float(r))
            rep.concatenated.append(name)
            continue
        raw = contribs[0][0].wrapper.raw_layer()
        W0 = raw.weight.detach().float()
        W, b = W0, getattr(raw, "bias", None)
        with torch.no_grad():
            for a, w in adapters:  # compose in attach order (exact for multiplicative algorithms too)
                W, b = a.adapted_weight(W, b, w)
        delta = W.float() - W0
        if rank:
            f = factor(delta, "fixed", rank, svd="full")
            out.update(f.locon_tensors(name, tuple(delta.shape)))
            rep.svd[name] = f.rel_error
        else:
            out[f"{name}.diff"] = delta
            if b is not None and raw.bias is not None and not torch.equal(b, raw.bias):
                out[f"{name}.diff_b"] = (b.float() - raw.bias.float()).detach()
            rep.full.append(name)
    return out, rep


def merge_adapters(base: str, adapters: list[tuple[str, float]], out: str, *, rank: int | None = None,
                   dtype: str | None = "fp16", overwrite: bool = False, strict: bool = True) -> AdapterMergeReport:
    """Merge several adapter files into one adapter file (see the module docstring)."""
    check_output(out, _inputs(base, adapters), overwrite=overwrite, suggest="merged.safetensors")
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank must be at least 1 (got {rank})")
    pipe = sd.load_pipeline(base, tokenizer=False)
    nets = [(sd.load(pipe, p, multiplier=1.0, strict=strict), w) for p, w in adapters]
    roots = sd.roots(pipe)
    tensors, rep = merge_adapter_networks(nets, roots, rank)
    for net, _ in reversed(nets):
        net.detach()
    merged = network_from_tensors(tensors, roots, source="merge")
    merged.base_metadata.update(sd.adapter_metadata(sd.model_info(pipe)))
    merged.save(out, dtype=DTYPES[dtype], metadata={"lyco.merged_from": json.dumps([[p, w] for p, w in adapters]),
                                                   "lyco.merge_report": rep.summary()})
    merged.detach()
    return rep


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lyco merge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="base model: diffusers folder, single file, or builtin:tiny")
    ap.add_argument("adapters", nargs="+", help="adapter files, each optionally path:weight")
    ap.add_argument("-o", "--output", required=True,
                    help="output: a .safetensors single-file checkpoint or a diffusers folder (any other path); "
                         "with --adapter an adapter .safetensors file")
    ap.add_argument("--adapter", action="store_true", help="merge the adapters into one adapter file instead")
    ap.add_argument("--rank", type=int, help="with --adapter: factorise non-concatenable layers to this rank")
    add_option(ap, "--unet-weight", type=float, default=1.0, help="strength of every adapter's UNet part (times "
               "its own weight; default 1)")
    add_option(ap, "--te-weight", type=float, default=1.0, help="strength of every adapter's text-encoder part "
               "(times its own weight; default 1)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                    help="dtype of the output (default: checkpoints keep the base's, adapters fp16)")
    add_common(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    adapters = [parse_adapter_arg(s) for s in a.adapters]
    strict = not a.ignore_unmatched
    if a.adapter:
        if (a.unet_weight, a.te_weight) != (1.0, 1.0):
            raise ConfigError("--unet-weight / --te-weight apply to checkpoint merges; with --adapter give each "
                              "adapter its weight (path:weight)")
        rep = merge_adapters(a.base, adapters, a.output, rank=a.rank, dtype=a.dtype or "fp16", overwrite=a.overwrite,
                             strict=strict)
        print(rep.summary())
    else:
        if a.rank is not None:
            raise ConfigError("--rank applies to --adapter merges only (a merged checkpoint has no rank)")
        merge_into_checkpoint(a.base, adapters, a.output, unet_weight=a.unet_weight, te_weight=a.te_weight,
                              dtype=a.dtype, overwrite=a.overwrite, strict=strict)
    print(f"wrote {a.output}")
    return 0
