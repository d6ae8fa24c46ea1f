"""Trainer overhead: ``lyco train`` steps/s against a minimal hand-written loop doing the same training.

Both train ``builtin:tiny`` on the micro-world's "olis creature" dataset (8 images, 32 px, batch 8) with the same
adapter (LoRA dim 8 / alpha 8, preset attn-mlp, UNet and text encoder) and optimizer (AdamW, lr 1e-4, weight decay
0.01, gradient clipping at 1.0: the trainer's defaults).  The trainer runs through its public entry point with
logging, caches and states on their defaults; the hand-written loop is what a user would write: latents encoded
once, then text encoder + UNet forward, MSE loss, backward, clip, step.

A step's time is the interval between consecutive training UNet forwards (hooked on the UNet class, so the trainer
is measured from outside); the first steps (caches filling) are dropped and the rest averaged, so periodic work
(logging) counts.  Trainer and loop runs alternate; the ratio of their medians is the trainer's overhead.

    python benchmarks/bench_train.py --quick           # 3 runs each of 30 steps
    python benchmarks/bench_train.py --profile         # also: where the trainer's time goes (cProfile)
    python benchmarks/bench_train.py --device cuda
"""
from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import common

import lyco
import lyco.sd
from lyco.train import load_train_config

try:  # the public entry point
    from lyco.train import train as lyco_train  # type: ignore[attr-defined]
except ImportError:
    from lyco.train.loop import train as lyco_train

NETWORK = dict(algo="lora", dim=8, alpha=8.0, preset="attn-mlp")
LR, WEIGHT_DECAY, MAX_GRAD_NORM, BATCH, RESOLUTION = 1e-4, 0.01, 1.0, 8, 32


class StepClock:
    """Timestamps of every UNet forward that builds a graph (training), for any UNet2DConditionModel."""

    def __init__(self, clock: str) -> None:
        from diffusers import UNet2DConditionModel
        self.cls = UNet2DConditionModel
        self.tick = common.CLOCKS[clock]
        self.stamps: list[float] = []
        self._orig = None

    def __enter__(self):
        orig = self._orig = self.cls.forward
        stamps, tick = self.stamps, self.tick

        def forward(mod, *a, **k):
            if torch.is_grad_enabled():
                stamps.append(tick())
            return orig(mod, *a, **k)

        self.cls.forward = forward
        return self

    def __exit__(self, *exc):
        self.cls.forward = self._orig

    def mean_step(self, skip: int) -> float:
        d = [b - a for a, b in zip(self.stamps, self.stamps[1:])][skip:]
        return statistics.fmean(d)


def make_dataset(root: Path) -> Path:
    from lyco.world.dataset import write_dataset
    return Path(write_dataset("olis", root / "olis").root)


def trainer_config(data: Path, out: Path, steps: int):
    return load_train_config(data={
        "version": 1, "name": "bench", "output_dir": str(out), "overwrite": True,
        "model": {"base": "builtin:tiny"},
        "network": dict(NETWORK),
        "train": {"steps": steps, "seed": 0, "lr": LR},
        "datasets": [{"resolution": RESOLUTION, "batch_size": BATCH, "bucket": {"enabled": False},
                      "folders": [str(data)]}],
    })


def run_trainer(data: Path, tmp: Path, steps: int, clock: str, skip: int, device: str) -> float:
    cfg = trainer_config(data, tmp / "run", steps)
    with StepClock(clock) as sc:
        lyco_train(cfg)
    return sc.mean_step(skip)


def run_loop(data: Path, steps: int, clock: str, skip: int, device: str) -> float:
    """The minimal loop: same model, adapter, batch, optimizer; latents encoded once."""
    import numpy as np
    from diffusers import DDPMScheduler
    from PIL import Image
    pipe = lyco.sd.load_pipeline("builtin:tiny")
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).to(device)
    net = lyco.sd.attach(pipe, lyco.AdapterConfig(**NETWORK))
    net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    files = sorted(p for p in data.rglob("*.png"))[:BATCH]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((RESOLUTION,) * 2),
                                                      dtype="float32")).permute(2, 0, 1) / 127.5 - 1 for f in files])
    with torch.no_grad():
        latents = pipe.vae.encode(pixels.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer([f.with_suffix(".txt").read_text().strip() for f in files], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(device)
    gen = torch.Generator().manual_seed(0)
    with StepClock(clock) as sc:
        for _ in range(steps):
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(device)
            h = pipe.text_encoder(ids)[0]
            pred = pipe.unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=h).sample
            F.mse_loss(pred.float(), noise.float()).backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        sc.stamps.append(sc.tick())  # the end of the last step
    net.detach()
    return sc.mean_step(skip)


def profile_trainer(data: Path, tmp: Path, steps: int) -> str:
    """cProfile of one trainer run: the lyco functions with the most own time outside torch's kernels."""
    cfg = trainer_config(data, tmp / "prof", steps)
    pr = cProfile.Profile()
    pr.enable()
    lyco_train(cfg)
    pr.disable()
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf).sort_stats("cumulative")
    st.print_stats(r"lyco/train|accelerate|tqdm|tensorboard|PIL", 25)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 runs each of 30 steps")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--skip", type=int, default=3, help="first step intervals dropped (caches filling)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=sorted(common.CLOCKS), default="wall")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not common.cuda_ok(args.device):
        return 0
    if args.device == "cpu":
        import os
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer picks its device through accelerate
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.runs or (3 if args.quick else 5)
    steps = args.steps or (30 if args.quick else 60)
    logging.getLogger("lyco").setLevel(logging.WARNING)
    print(common.machine(args.device))
    times: dict[str, list[float]] = {"lyco train": [], "hand-written loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp)
        for r in range(runs):
            times["lyco train"].append(run_trainer(data, tmp, steps, args.clock, args.skip, args.device))
            times["hand-written loop"].append(run_loop(data, steps, args.clock, args.skip, args.device))
            print(f"run {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms/step" for k, v in times.items()),
                  flush=True)
        prof = profile_trainer(data, tmp, steps) if args.profile else ""
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["lyco train"] / med["hand-written loop"]
    note = (f"{runs} alternating runs of {steps} steps each; the first {args.skip} step intervals of a run dropped; "
            f"clock: {args.clock}.  builtin:tiny, batch {BATCH} at {RESOLUTION} px, LoRA dim 8 (attn-mlp, UNet + text "
            f"encoder), AdamW lr {LR}, clipping {MAX_GRAD_NORM}; trainer defaults otherwise (TensorBoard logging every "
            "step, latent cache in memory, no state saves).")
    lines = common.header(f"Trainer overhead ({args.device}{', quick' if args.quick else ''})", args.device,
                          (args.note + "\n\n" if args.note else "") + note)
    lines += ["| loop | ms / step (median of runs) | steps/s | runs (ms / step) |", "|---|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k] * 1e3:.1f} | {1 / med[k]:.2f} | {', '.join(f'{x * 1e3:.1f}' for x in v)} |")
    lines += ["", f"**lyco train / hand-written loop: {ratio:.3f}** "
              f"(overhead {100 * (ratio - 1):+.1f} %, target ≤ +10 %)"]
    if prof:
        lines += ["", "## Where the trainer's time goes (cProfile, cumulative)", "", "```", prof.strip(), "```"]
    return common.publish(f"train-{args.device}{'-quick' if args.quick else ''}", lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
