"""Evaluation throughput: images/s of ``lyco eval``'s generation and feature extraction against plain loops.

On ``builtin:tiny`` with the micro-world concept "olis" (its prompt sets), the base model and one LoRA checkpoint:

* generation - lyco eval's generation phase (plan, per-image seeds 1000 + k, batches across prompts and seeds,
  chunked prompt encoding, PNG cache) against a plain diffusers ``StableDiffusionPipeline`` loop producing the same
  images: the same jobs in the same batches, one CPU generator per image, the same sampler settings, PNGs saved;
  the checkpoint's adapter attached the same way in both (its cost is the adapter's, not the evaluation's);
* features - lyco eval's feature phase (every backbone the default metrics need, per-image cache) against a plain
  loop: open, preprocess, encode in the same batches, save one .npy per image.

Every rep starts from empty caches; lyco and the plain loops alternate, medians are compared.  The images of
both generation paths are compared pixel by pixel.

    python benchmarks/bench_eval.py --quick
    python benchmarks/bench_eval.py --device cuda
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

import lyco
import lyco.sd
from lyco.eval.config import EvalConfig
from lyco.eval.generate import DTYPES, run_generation, set_sampler, windows
from lyco.eval.runner import Backbones, build_plan, extract_needs, feature_needs


def make_inputs(root: Path) -> tuple[Path, Path]:
    """The olis dataset and a LoRA checkpoint (random, strong enough to change the images)."""
    from lyco.world.dataset import write_dataset
    data = Path(write_dataset("olis", root / "olis").root)
    pipe = lyco.sd.load_pipeline("builtin:tiny")
    net = lyco.sd.attach(pipe, lyco.AdapterConfig(algo="lora", dim=8, alpha=8, seed=0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    adapter = root / "lora.safetensors"
    net.save(adapter)
    return data, adapter


def eval_config(root: Path, data: Path, adapter: Path, cache: Path, images: int, steps: int, batch: int,
                device: str) -> EvalConfig:
    return EvalConfig(base="builtin:tiny", out=str(root / "out"), cache=str(cache),
                      checkpoints=[{"name": "lora", "adapter": str(adapter)}],
                      concepts=[{"world": "olis", "dataset": str(data)}],
                      generation={"steps": steps, "guidance_scale": 5.0, "images": images, "batch_size": batch,
                                  "device": device},
                      backbones={"device": device})


# ----------------------------------------------------------------------------------------------- generation
def lyco_generate(cfg: EvalConfig, device: torch.device) -> int:
    """lyco eval's generation phase, as :func:`lyco.eval.evaluate` runs it (one process)."""
    plan = build_plan(cfg)
    mine: dict[str, list] = defaultdict(list)
    for window in windows(plan.unique_jobs(), cfg.generation.batch_size):
        mine[window[0].variant] += window
    return run_generation(plan.variants, mine, cfg.generation, cfg.cache_dir, device=device, size=plan.size,
                          progress=False)


def plain_generate(cfg: EvalConfig, device: torch.device, out: Path) -> int:
    """The same images with a plain diffusers loop: the same jobs and batches, a generator per image."""
    from diffusers import StableDiffusionPipeline

    from lyco.sd.pipelines import resolve_model_path
    plan = build_plan(cfg)   # only for the job list (prompts, seeds, variants); not timed separately
    g = cfg.generation
    n = 0
    pipe = StableDiffusionPipeline.from_pretrained(str(resolve_model_path("builtin:tiny")), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    set_sampler(pipe, g.sampler)
    for v in plan.variants:
        net = lyco.sd.load(pipe, v.adapter, multiplier=v.multiplier) if v.adapter else None
        if net is not None:
            net.to(device=device, dtype=DTYPES[g.dtype])
        for batch in windows([j for j in plan.unique_jobs() if j.variant == v.name], g.batch_size):
            with torch.no_grad():
                images = pipe(prompt=[j.prompt for j in batch], negative_prompt=[g.negative_prompt] * len(batch),
                              generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
                              num_inference_steps=g.steps, guidance_scale=g.guidance_scale, eta=0.0,
                              width=plan.size[0], height=plan.size[1], output_type="pil").images
            for j, im in zip(batch, images):
                im.save(out / f"{j.key}.png")
            n += len(batch)
        if net is not None:
            net.detach()
    return n


def compare_images(cfg: EvalConfig, plain_dir: Path) -> int:
    """Largest absolute pixel difference between lyco's cached images and the plain loop's."""
    from PIL import Image
    worst = 0
    for j in build_plan(cfg).unique_jobs():
        a = np.asarray(Image.open(j.path(cfg.cache_dir))).astype(int)
        b = np.asarray(Image.open(plain_dir / f"{j.key}.png")).astype(int)
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


# ----------------------------------------------------------------------------------------------- features
def lyco_features(cfg: EvalConfig, device: torch.device) -> int:
    """lyco eval's feature phase: every (backbone, image, preprocessing) the metrics need, into the cache."""
    needs = feature_needs(cfg, build_plan(cfg))
    extract_needs(needs, Backbones(cfg, device), cfg, {}, False)
    return len(needs)


def plain_features(cfg: EvalConfig, device: torch.device, out: Path) -> int:
    """The same features with a plain loop: open, preprocess, encode per batch, save one .npy per image."""
    from PIL import Image
    needs = feature_needs(cfg, build_plan(cfg))  # the work list
    bbs = Backbones(cfg, device)
    bs = cfg.backbones.batch_size
    by_kind: dict[str, list] = defaultdict(list)
    for n in needs:
        by_kind[n.kind].append(n)
    count = 0
    for kind, items in by_kind.items():
        bb = bbs.get(kind)
        for start in range(0, len(items), bs):
            chunk = items[start:start + bs]
            x = torch.stack([bb.preprocess(Image.open(n.path).convert("RGB"), n.mode) for n in chunk])
            with torch.no_grad():
                feats = bb.encode_image(x).cpu().numpy().astype(np.float32)
            for i, f in enumerate(feats):
                np.save(out / f"{kind}-{start + i}.npy", f)
            count += len(chunk)
    return count


# ----------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 images per prompt set, 10 steps, 3 reps")
    ap.add_argument("--images", type=int, default=None, help="images per prompt set")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=sorted(common.CLOCKS), default="wall")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not common.cuda_ok(args.device):
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or (4 if args.quick else 12)
    steps = args.steps or (10 if args.quick else 20)
    reps = args.reps or (3 if args.quick else 5)
    device = torch.device(args.device)
    for name in ("lyco", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(common.machine(args.device))
    tick = common.CLOCKS[args.clock]
    t: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, adapter = make_inputs(root)
        worst = None
        for rep in range(reps):
            cache, plain = root / f"cache{rep}", root / f"plain{rep}"
            plain.mkdir()
            cfg = eval_config(root, data, adapter, cache, images, steps, args.batch, args.device)
            for name, fn in (("generation lyco", partial(lyco_generate, cfg, device)),
                             ("generation plain", partial(plain_generate, cfg, device, plain)),
                             ("features lyco", partial(lyco_features, cfg, device)),
                             ("features plain", partial(plain_features, cfg, device, plain))):
                t0 = tick()
                counts[name] = fn()
                t[name].append(tick() - t0)
            worst = compare_images(cfg, plain) if worst is None else max(worst, compare_images(cfg, plain))
            print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{k} {counts[k] / v[-1]:.2f}/s" for k, v in t.items()),
                  flush=True)
            shutil.rmtree(cache)
            shutil.rmtree(plain)
    med = {k: statistics.median(v) for k, v in t.items()}
    note = (f"builtin:tiny, concept olis (its prompt sets), base + one LoRA checkpoint, {images} images per prompt "
            f"set, DDIM {steps} steps, CFG 5, batch {args.batch}; {reps} alternating reps from empty caches; "
            f"clock: {args.clock}.  Images of the two generation paths differ by at most {worst} (8-bit pixel values).")
    lines = common.header(f"Evaluation throughput ({args.device}{', quick' if args.quick else ''})", args.device,
                          (args.note + "\n\n" if args.note else "") + note)
    lines += ["| phase | items | lyco (items/s) | plain loop (items/s) | lyco time / plain time |",
              "|---|---|---|---|---|"]
    for phase in ("generation", "features"):
        a, b = med[f"{phase} lyco"], med[f"{phase} plain"]
        n = counts[f"{phase} lyco"]
        lines.append(f"| {phase} | {n} | {n / a:.2f} | {counts[f'{phase} plain'] / b:.2f} | **{a / b:.3f}** |")
    lines += ["", "Target: lyco's time ≤ 1.10 × the plain loop's in both phases."]
    return common.publish(f"eval-{args.device}{'-quick' if args.quick else ''}", lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
