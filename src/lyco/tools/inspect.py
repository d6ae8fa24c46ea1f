"""``lyco inspect FILE``: algorithms, ranks, module counts per block, base model family, metadata, size, ΔW norms
per block, and which UIs/libraries load the file exactly, approximately, or not."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import Counter, defaultdict
from typing import Any

import torch

from ..algos import registry
from ..io.files import read_file
from .compat import CLIENTS, group, verdicts

_BLOCK = re.compile(
    r"^(lora_unet_(?:down_blocks_\d+|mid_block|up_blocks_\d+|input_blocks_\d+|middle_block|output_blocks_\d+|"
    r"conv_in|conv_out|time_embedding|time_embed|add_embedding|label_emb|out)|lora_te\d?_text_model_encoder_layers_\d+|"
    r"lora_te\d?|lycoris)")


def block_of(name: str) -> str:
    m = _BLOCK.match(name)
    return m.group(1) if m else name.split("_")[0]


def delta_norm(parts: dict[str, torch.Tensor]) -> float | None:
    """‖ΔW‖_F computed from the file alone (None where it needs the base weight, e.g. OFT, IA3, GLoRA, DoRA)."""
    cls = registry.detect(parts)
    if cls is None or "dora_scale" in parts:
        return None
    f = {k: v.float() for k, v in parts.items()}
    algo = cls.algo
    if algo == "lora":
        down, up = f["lora_down.weight"], f["lora_up.weight"]
        r = down.shape[0]
        s = (float(f["alpha"]) if "alpha" in f and float(f["alpha"]) else r) / r
        if "lora_mid.weight" in f:
            down = torch.einsum("pqk,qi->pik", f["lora_mid.weight"].reshape(r, r, -1), down.reshape(r, -1))
        return s * float((up.reshape(up.shape[0], r) @ down.reshape(r, -1)).norm())
    if algo == "loha":
        r = f["hada_w1_b"].shape[0]
        s = (float(f["alpha"]) if "alpha" in f and float(f["alpha"]) else r) / r
        if "hada_t1" in f:
            d1 = torch.einsum("pqk,po,qi->oik", f["hada_t1"].reshape(r, r, -1), f["hada_w1_a"], f["hada_w1_b"])
            d2 = torch.einsum("pqk,po,qi->oik", f["hada_t2"].reshape(r, r, -1), f["hada_w2_a"], f["hada_w2_b"])
        else:
            d1, d2 = f["hada_w1_a"] @ f["hada_w1_b"], f["hada_w2_a"] @ f["hada_w2_b"]
        return s * float((d1 * d2).norm())
    if algo == "lokr":
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        if "lokr_w2" in f:
            w2n = float(f["lokr_w2"].norm())
        elif "lokr_t2" in f:
            r = f["lokr_t2"].shape[0]
            w2n = float(torch.einsum("pqk,pi,qj->ijk", f["lokr_t2"].reshape(r, r, -1), f["lokr_w2_a"], f["lokr_w2_b"]).norm())
        else:
            w2n = float((f["lokr_w2_a"] @ f["lokr_w2_b"]).norm())
        rk = f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else (f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else None)
        s = 1.0 if rk is None else (float(f["alpha"]) if "alpha" in f and float(f["alpha"]) else rk) / rk
        return s * float(w1.norm()) * w2n
    if algo == "full":
        return float(f["diff"].norm())
    if algo == "norm":
        return float(f["w_norm"].norm())
    return None


def family_of(names: list[str], meta: dict[str, str]) -> str:
    v = meta.get("ss_base_model_version", "")
    if v:
        return {"sd_v1": "sd1", "sd_v1_v": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2"}.get(v, "sdxl" if v.startswith("sdxl") else v)
    if any(n.startswith(("lora_te1_", "lora_te2_")) or n.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks")) for n in names):
        return "sdxl"
    if any(n.startswith("lora_unet_") or n.startswith("lora_te_") for n in names):
        return "sd1/sd2"
    return "unknown (generic model)"


def summarize(path: str) -> dict[str, Any]:
    tensors, meta = read_file(path)
    groups = group(tensors)
    algos: Counter = Counter()
    ranks: Counter = Counter()
    blocks: dict[str, dict[str, Any]] = defaultdict(lambda: {"modules": 0, "delta_norm_sq": 0.0, "unknown_norm": 0})
    unknown = []
    for name, parts in groups.items():
        cls = registry.detect(parts)
        if cls is None:
            unknown.append(name)
            continue
        tag = cls.algo + ("+dora" if "dora_scale" in parts else "") + (
            "+tucker" if parts.keys() & {"lora_mid.weight", "hada_t1", "lokr_t2"} else "")
        algos[tag] += 1
        for key in ("lora_down.weight", "hada_w1_b", "lokr_w1_b", "lokr_w2_b"):
            if key in parts:
                ranks[int(parts[key].shape[0])] += 1
                break
        b = blocks[block_of(name)]
        b["modules"] += 1
        n = delta_norm(parts)
        if n is None:
            b["unknown_norm"] += 1
        else:
            b["delta_norm_sq"] += n * n
    names = list(groups)
    sdxl_diffusers = any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks")) for n in names) and \
        any(n.startswith(("lora_te1_", "lora_te2_")) for n in names)
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in tensors.values())
    return {
        "file": path,
        "size_bytes": os.path.getsize(path),
        "modules": len(groups),
        "tensors": len(tensors),
        "base_model": family_of(names, meta),
        "algorithms": dict(algos),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "blocks": {k: {"modules": v["modules"], "delta_norm": math.sqrt(v["delta_norm_sq"]),
                       "modules_without_norm": v["unknown_norm"]} for k, v in blocks.items()},
        "dtypes": dict(dtypes),
        "unknown_modules": unknown,
        "compatibility": {c: {"level": v.level, "reason": v.reason}
                          for c, v in verdicts(groups, sdxl_diffusers).items()},
        "metadata": meta,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco inspect", description=__doc__)
    ap.add_argument("file", help="adapter file (.safetensors, or .pt/.ckpt read with weights_only)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    info = summarize(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['file']}: {info['size_bytes'] / 1024:.1f} KB, {info['modules']} modules, {info['tensors']} tensors")
    print(f"base model: {info['base_model']}")
    print("algorithms: " + ", ".join(f"{k} x{v}" for k, v in info["algorithms"].items()))
    if info["ranks"]:
        print("ranks: " + ", ".join(f"{k} x{v}" for k, v in info["ranks"].items()))
    print("dtypes: " + ", ".join(f"{k} x{v}" for k, v in info["dtypes"].items()))
    print("blocks (modules, ‖ΔW‖):")
    for k, v in info["blocks"].items():
        extra = f" (+{v['modules_without_norm']} need the base model)" if v["modules_without_norm"] else ""
        print(f"  {k:<48} {v['modules']:>4}  {v['delta_norm']:.4g}{extra}")
    if info["unknown_modules"]:
        print(f"unrecognised modules: {', '.join(info['unknown_modules'][:10])}")
    print("compatibility:")
    for c in CLIENTS:
        v = info["compatibility"][c]
        print(f"  {c:<13} {v['level']:<12} {v['reason']}")
    meta = info["metadata"]
    shown = {k: v for k, v in meta.items() if k != "lyco_config"}
    if shown:
        print("metadata:")
        for k, v in sorted(shown.items()):
            print(f"  {k} = {v if len(v) < 100 else v[:97] + '...'}")
    return 0
