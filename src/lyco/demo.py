"""``lyco demo``: fine-tune the embedded ``builtin:tiny`` model on a held-out micro-world concept with LoRA, measure
that it learned it and end with the paper's evaluation of base vs tuned (HTML report); ``lyco demo --toy``: several
algorithms on a toy model, with a table of parameter counts, file sizes and losses."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import attach, load, sd
from .train.config import load_train_config
from .world.checks import concept_scores
from .world.sampling import generate

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("lora", dict(algo="lora", dim=8, alpha=8.0)),
    ("locon-tucker", dict(algo="locon", dim=8, alpha=8.0, use_tucker=True)),
    ("loha", dict(algo="loha", dim=4, alpha=4.0)),
    ("lokr", dict(algo="lokr", dim=4, alpha=4.0, factor=4)),
    ("lora+dora", dict(algo="lora", dim=8, alpha=8.0, dora_wd=True)),
    ("full", dict(algo="full")),
]


class ToyNet(nn.Module):
    """A little conv + attention-like network standing in for a UNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 32, 3, padding=1)
        self.conv_mid = nn.Conv2d(32, 32, 3, padding=1)
        self.proj = nn.Linear(32, 64)
        self.out = nn.Linear(64, 3)

    def forward(self, x):
        h = torch.relu(self.conv_in(x))
        h = torch.relu(self.conv_mid(h))
        t = h.flatten(2).transpose(1, 2)
        return self.out(torch.tanh(self.proj(t)))


def make_task(seed: int = 0):
    """A base model and a 'fine-tuned' teacher that differs by low-rank changes in two layers."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = ToyNet()
    teacher = ToyNet()
    teacher.load_state_dict(base.state_dict())
    with torch.no_grad():
        teacher.proj.weight.add_(torch.randn(64, 3, generator=g) @ torch.randn(3, 32, generator=g) * 0.15)
        teacher.conv_mid.weight.add_(torch.randn(32, 32, 3, 3, generator=g) * 0.02)
    x = torch.randn(64, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = teacher(x)
    return base, x, y


def run(steps: int = 150, lr: float = 3e-3, out_dir: str | None = None) -> list[dict]:
    out_dir = out_dir or tempfile.mkdtemp(prefix="lyco-demo-")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name, opts in VARIANTS:
        model, x, y = make_task()
        with torch.no_grad():
            loss0 = (model(x) - y).pow(2).mean().item()
        net = attach(model, seed=0, **opts)
        opt = torch.optim.AdamW(net.parameters(), lr=lr * (0.3 if opts["algo"] == "full" else 1.0))
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = (model(x) - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            trained = model(x)
            loss1 = (trained - y).pow(2).mean().item()
        path = os.path.join(out_dir, f"{name.replace('+', '_')}.safetensors")
        net.save(path, dtype=torch.float16)
        net.detach()
        reloaded = load(path, model)
        with torch.no_grad():
            err = (model(x) - trained).abs().max().item()
        reloaded.detach()
        rows.append(dict(algo=name, modules=len(reloaded), params=sum(p.numel() for p in net.parameters()),
                         size_kb=os.path.getsize(path) / 1024, loss0=loss0, loss1=loss1, reload_err=err,
                         sec=dt, path=path))
    return rows


def world_demo(out_dir: str, steps: int | None = None, n_eval: int = 16, eval_images: int = 4) -> dict:
    """Make the 'olis' concept dataset, train builtin:tiny on it with LoRA, measure the concept before/after, and
    (``eval_images`` > 0) evaluate base vs tuned as the paper does (:func:`paper_eval`)."""
    # imported here: they need the sd extra (Pillow), the toy demo does not
    from PIL import Image

    from .train.loop import train
    from .world.dataset import write_dataset

    out = Path(out_dir).resolve()
    data = out / "data" / "olis"
    info = write_dataset("olis", data, seed=0, overwrite=True)
    overrides = [f'output_dir="{out / "run"}"', f'datasets.0.folders=["{data}"]']
    if steps:
        overrides.append(f"train.steps={steps}")
    cfg = load_train_config(str(files("lyco") / "data" / "demo" / "olis-lora.toml"), overrides)
    prompts = [p.strip() for p in (data / "prompts" / "trigger.txt").read_text().splitlines() if p.strip()]
    eval_prompts = (prompts * n_eval)[:n_eval]
    pipe = sd.load_pipeline("builtin:tiny")
    t0 = time.perf_counter()
    before = generate(eval_prompts, pipe=pipe, seed=1000)
    final = train(cfg)
    train_s = time.perf_counter() - t0
    net = sd.load(pipe, final)
    after = generate(eval_prompts, pipe=pipe, seed=1000)
    net.detach()
    grid = np.concatenate([np.concatenate(list(before[:8]), 1), np.concatenate(list(after[:8]), 1)], 0)
    grid_path = out / "before_after.png"
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(grid_path)
    sb, sa = concept_scores(before, "olis"), concept_scores(after, "olis")
    result = {"dataset": data, "images": info.n_images, "adapter": final, "samples": final.parent / "samples",
              "grid": grid_path, "before": float(np.mean(sb)), "after": float(np.mean(sa)),
              "shown_before": sum(s >= 0.5 for s in sb), "shown_after": sum(s >= 0.5 for s in sa), "n": len(sb),
              "seconds": train_s, "steps": cfg.train.steps, "logs": final.parent / "logs"}
    if eval_images > 0:
        t1 = time.perf_counter()
        result["eval"] = paper_eval(out / "eval", data, final, eval_images)
        result["eval_seconds"] = time.perf_counter() - t1
    return result


def paper_eval(out: Any, data: Any, adapter: Any, images: int) -> Any:
    """``lyco eval`` of builtin:tiny with and without the adapter on the held-out concept: every prompt set of the
    concept (``images`` images each, DDIM 20 steps, CFG 5 as the tiny model was trained for), the paper's metrics
    with the micro-world's backbones, an HTML report (and CSV/JSON) in ``out``."""
    from .eval.config import EvalConfig
    from .eval.runner import evaluate

    cfg = EvalConfig(base="builtin:tiny", out=str(out),
                     checkpoints=[{"name": "olis-lora", "adapter": str(adapter), "config": "lora"}],
                     concepts=[{"world": "olis", "dataset": str(data)}],
                     generation={"sampler": "ddim", "steps": 20, "guidance_scale": 5.0, "images": images,
                                 "batch_size": 32},
                     rank={"include_base": True},
                     report={"title": "lyco demo: builtin:tiny before and after LoRA on 'olis creature'",
                             "grid_images": min(images, 4)})
    return evaluate(cfg, progress=sys.stderr.isatty())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco demo", description="Fine-tune the embedded model on a held-out concept "
                                 "with LoRA, show it learned it and evaluate it as the paper does (or --toy: "
                                 "adapters on a toy model).")
    ap.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the demo config's)")
    ap.add_argument("--toy", action="store_true", help="the quick toy demo: several algorithms on a small model")
    ap.add_argument("--eval-images", type=int, default=4,
                    help="images per prompt set in the closing evaluation (default 4; 0 skips it)")
    args = ap.parse_args(argv)
    if args.toy:
        return toy_main(args.steps or 150, args.out)
    r = world_demo(args.out, args.steps, eval_images=args.eval_images)
    print(f"\nlyco demo: taught builtin:tiny the held-out concept 'olis creature' ({r['images']} images) with LoRA, "
          f"{r['steps']} steps in {r['seconds']:.0f} s")
    print(f"  concept score on {r['n']} trigger-prompt images (world classifier, >= 0.5 = shows the concept):")
    print(f"    before: {r['before']:.2f} ({r['shown_before']}/{r['n']} show it)")
    print(f"    after:  {r['after']:.2f} ({r['shown_after']}/{r['n']} show it)")
    print(f"  dataset:        {r['dataset']}")
    print(f"  adapter:        {r['adapter']}")
    print(f"  before | after: {r['grid']}")
    print(f"  samples:        {r['samples']}")
    print(f"  TensorBoard:    tensorboard --logdir {r['logs']}")
    if "eval" in r:
        from .eval.cli import terminal_summary
        print(f"\nthe paper's evaluation, base vs tuned ({r['eval_seconds']:.0f} s):")
        print("\n".join("  " + line for line in terminal_summary(r["eval"], "value").splitlines()))
        print(f"  report:         {r['eval'].files['html']}")
    return 0


def toy_main(steps: int, out: str) -> int:
    logging.getLogger("lyco").setLevel(logging.WARNING)
    rows = run(steps, out_dir=out)
    head = (f"{'algorithm':<14}{'modules':>8}{'params':>10}{'file (fp16)':>13}{'loss before':>13}{'loss after':>12}"
            f"{'reload err(fp16)':>18}{'train s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['algo']:<14}{r['modules']:>8}{r['params']:>10,}{r['size_kb']:>10.1f} KB{r['loss0']:>13.5f}"
              f"{r['loss1']:>12.5f}{r['reload_err']:>18.2e}{r['sec']:>9.2f}")
    print(f"\nadapter files written to {os.path.abspath(out)}/ (kohya/LyCORIS .safetensors, fp16)")
    return 0
