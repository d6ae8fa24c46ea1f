"""Time lyco-tiny sampling: 8 images, 20 DDIM steps, classifier-free guidance 5 (the issue's budget: <= 2 s).

    python benchmarks/tiny_sampling.py [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from lyco.world.model import load_pipeline
from lyco.world.sampling import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = load_pipeline("builtin:tiny")
    print(f"load: {time.perf_counter() - t0:.2f} s")
    prompts = ["a red circle on a blue background", "a small yellow star on the left in a night scene"] * (args.n // 2)
    generate(prompts[:2], pipe, steps=2)  # warm-up
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        generate(prompts, pipe, steps=args.steps, guidance=5.0, seed=r)
        times.append(time.perf_counter() - t0)
    print(f"{args.n} images x {args.steps} DDIM steps, CFG 5, {args.threads} threads: "
          f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")


if __name__ == "__main__":
    main()
