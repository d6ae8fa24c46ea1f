"""LoCon extraction on an SD1.5-shaped pair: lyco extract vs lycoris-lora 4.1.3's extract_diff.

The base UNet has the real SD1.5 architecture with random weights; the tuned UNet adds a planted rank-``r``
ΔW to every Linear/Conv layer of the targeted blocks.  Both extractors run in this process at the true rank;
the script reports wall time and the reconstruction error ‖ΔW - ΔW_extracted‖ / ‖ΔW‖ of each tool (measured on
the same layers from the written tensors), then writes a Markdown table to benchmarks/results/.

    python benchmarks/bench_extract.py                 # SD1.5 UNet, attention + resnet layers (takes a while on CPU)
    python benchmarks/bench_extract.py --limit 40      # only the first 40 layers (a quick check)
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

import torch

import lyco
from lyco.inject import Root, select_targets
from lyco.tools.extract import ExtractOptions, extract_tensors

CONFIG = Path(lyco.__file__).parent / "data" / "sd_configs" / "sd15" / "unet" / "config.json"


def planted_pair(rank: int, limit: int | None, seed: int = 0):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    base = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text()))
    base.requires_grad_(False)
    tuned = copy.deepcopy(base)
    targets = select_targets([Root("lora_unet", base)], lyco.AdapterConfig(preset="kohya-conv"))
    if limit:
        targets = targets[:limit]
    g = torch.Generator().manual_seed(seed + 1)
    paths = set()
    with torch.no_grad():
        for t in targets:
            m = tuned.get_submodule(t.path)
            o, x = m.weight.shape[0], m.weight[0].numel()
            d = (torch.randn(o, rank, generator=g) @ torch.randn(rank, x, generator=g)) * (0.02 / math.sqrt(rank))
            m.weight.add_(d.reshape(m.weight.shape))
            paths.add(t.path)
    return base, tuned, paths


def rel_error(base, tuned, tensors: dict, name_of) -> float:
    num = den = 0.0
    for path, m0 in base.named_modules():
        name = name_of(path)
        if f"{name}.lora_down.weight" not in tensors and f"{name}.diff" not in tensors:
            continue
        true = (tuned.get_submodule(path).weight - m0.weight).float().reshape(m0.weight.shape[0], -1)
        if f"{name}.diff" in tensors:
            got = tensors[f"{name}.diff"].float().reshape(true.shape)
        else:
            down = tensors[f"{name}.lora_down.weight"].float()
            up = tensors[f"{name}.lora_up.weight"].float()
            r = down.shape[0]
            alpha = float(tensors.get(f"{name}.alpha", torch.tensor(float(r))))
            got = (alpha / r) * up.reshape(up.shape[0], r) @ down.reshape(r, -1)
        num += float((true - got).pow(2).sum())
        den += float(true.pow(2).sum())
    return math.sqrt(num / den) if den else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="only the first N targeted layers")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    base, tuned, paths = planted_pair(args.rank, args.limit)
    print(f"planted rank-{args.rank} deltas in {len(paths)} layers of an SD1.5-shaped UNet")

    root_b, root_t = Root("lora_unet", base), Root("lora_unet", tuned)
    opts = ExtractOptions(mode="fixed", linear_dim=args.rank, conv_dim=args.rank, full_when_cheaper=False,
                          min_diff=1e-9)
    t0 = time.perf_counter()
    ours, report = extract_tensors([root_b], [root_t], opts, progress=False)
    t_lyco = time.perf_counter() - t0
    name_of = lambda p: "lora_unet_" + p.replace(".", "_")  # noqa: E731
    err_lyco = rel_error(base, tuned, ours, name_of)

    from lycoris.utils import extract_diff
    t0 = time.perf_counter()
    theirs = extract_diff([], [], copy.deepcopy(base), copy.deepcopy(tuned), "fixed", args.rank, args.rank, "cpu",
                          False, 0.98, False)
    t_ref = time.perf_counter() - t0
    err_ref = rel_error(base, tuned, theirs, name_of)
    rows = [("lyco extract (randomised SVD at fixed rank)", t_lyco, err_lyco, len(report.layers)),
            ("lycoris-lora 4.1.3 extract_diff", t_ref, err_ref, len({k.split('.')[0] for k in theirs}))]
    lines = ["# LoCon extraction benchmark (SD1.5-shaped UNet, planted low-rank ΔW)", "",
             f"Date: {dt.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}; "
             f"{torch.get_num_threads()} threads; rank {args.rank}; {len(paths)} layers with a planted ΔW",
             f"Command: `python {' '.join(sys.argv)}`", "",
             "| tool | wall time (s) | relative reconstruction error | modules written |", "|---|---|---|---|"]
    for name, t, e, n in rows:
        lines.append(f"| {name} | {t:.1f} | {e:.2e} | {n} |")
    lines.append(f"\nspeed-up: {t_ref / t_lyco:.2f}x")
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"extract-{dt.datetime.now():%Y%m%d-%H%M}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
