"""``lyco demo``: adapt a small model with several algorithms, train each briefly on a toy task, save and
reload the files, and print a table of parameter counts, file sizes and losses."""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import torch
import torch.nn as nn

from . import attach, load

VARIANTS = [
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lyco demo", description=__doc__)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", default="demo_out", help="folder for the adapter files (default: demo_out)")
    args = ap.parse_args(argv)
    logging.getLogger("lyco").setLevel(logging.WARNING)
    rows = run(args.steps, out_dir=args.out)
    head = f"{'algorithm':<14}{'modules':>8}{'params':>10}{'file (fp16)':>13}{'loss before':>13}{'loss after':>12}{'reload err(fp16)':>18}{'train s':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['algo']:<14}{r['modules']:>8}{r['params']:>10,}{r['size_kb']:>10.1f} KB{r['loss0']:>13.5f}"
              f"{r['loss1']:>12.5f}{r['reload_err']:>18.2e}{r['sec']:>9.2f}")
    print(f"\nadapter files written to {os.path.abspath(args.out)}/ (kohya/LyCORIS .safetensors, fp16)")
    return 0
