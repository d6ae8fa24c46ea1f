"""Train the micro-world's evaluators: the world classifier and the tiny CLIP / DINOv2 / VGG-19 stand-ins.

    nice -n 10 python scripts/train_backbones.py            # all four, into src/lyco/data/
    python scripts/train_backbones.py --only clip --steps-scale 0.5   # what the shipped weights used

What each is trained on (all renders are seeded; see lyco/world/README.md):
  classifier  renders of the whole world (held-out shapes, styles, sunset included), one head per attribute,
              blur/noise/colour augmentation, then fine-tuned on half renders / half lyco-tiny VAE round trips
              (so it reads decoded images; needs data/tiny, i.e. run pretrain_tiny.py first)
                                                                      -> data/world/classifier.safetensors
  clip        base-world renders and their plain captions (no held-out concept, no trigger word: like real CLIP
              it has never seen the concepts), symmetric InfoNCE      -> data/backbones/clip  (CLIPModel)
  dino        renders of the whole world, supervised attribute heads on the CLS output (heads dropped)
                                                                      -> data/backbones/dino  (Dinov2Model)
  vgg         renders of the whole world, one concatenated attribute-logit output (like ImageNet classes)
                                                                      -> data/backbones/vgg   (VGG-19 layout)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from lyco.world import backbones as B
from lyco.world import checks as C
from lyco.world import render as R
from lyco.world.text import write_tokenizer
from portable_layout import make_portable  # noqa: E402  (scripts/ is on sys.path)

DATA = os.path.join(ROOT, "src", "lyco", "data")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def any_set(seed: int, n: int):
    scenes = [C.sample_any_scene(R.scene_rng(seed, i, 21)) for i in range(n)]
    x = C.images_to_tensor(np.stack([R.render(s) for s in scenes]))
    y = {k: torch.tensor([C.scene_labels(s)[k] for s in scenes]) for k in C.HEADS}
    return x, y


def norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[-1, 1] images -> mean/std-normalised, as the image processors do."""
    x01 = (x + 1) / 2
    return (x01 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def head_loss(logits: torch.Tensor, y: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    loss, o = 0.0, 0
    for k, labels in C.HEADS.items():
        n = len(labels)
        loss = loss + F.cross_entropy(logits[:, o:o + n], y[k][idx], ignore_index=C.IGNORE)
        o += n
    return loss


def fit(params, steps: int, lr: float, step_fn, name: str) -> None:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for step in range(steps):
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"{name} {step:5d}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)


def train_clip(seed: int, steps: int, out: str) -> None:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )
    torch.manual_seed(seed)
    tok_dir = os.path.join(out + ".tok")
    write_tokenizer(tok_dir)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    shutil.rmtree(tok_dir)
    text = {"vocab_size": len(tok), "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.eos_token_id}
    vision = {"image_size": 32, "patch_size": 4, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                  "num_attention_heads": 4}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))
    n = 20000
    scenes = [R.sample_scene(R.scene_rng(seed, i, 31)) for i in range(n)]
    x = norm(C.images_to_tensor(np.stack([R.render(s) for s in scenes])), CLIP_MEAN, CLIP_STD)
    gen = torch.Generator().manual_seed(seed)

    def step_fn(step: int) -> torch.Tensor:
        g = np.random.Generator(np.random.PCG64([seed, 32, step]))
        idx = torch.from_numpy(g.choice(n, 96, replace=False))
        caps = [R.caption(scenes[int(i)], g, drop=0.05) for i in idx]
        # CLIP pools at the first end-of-text token under a causal mask, so padding to the longest caption
        # gives the same embeddings as padding to 77, at a fraction of the cost
        ids = tok(caps, padding="longest", return_tensors="pt").input_ids
        xi = x[idx]
        xi = xi + 0.05 * torch.randn(xi.shape, generator=gen)
        out = model(input_ids=ids, pixel_values=xi, return_loss=True)
        return out.loss

    fit(list(model.parameters()), steps, 1e-3, step_fn, "clip")
    model.eval()
    if os.path.isdir(out):
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(out)
    make_portable(out)  # readable by transformers 4.x too


def train_dino(seed: int, steps: int, out: str, x, y) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    torch.manual_seed(seed)
    cfg = Dinov2Config(image_size=32, patch_size=4, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                       mlp_ratio=2)
    model = Dinov2Model(cfg)
    n_out = sum(len(v) for v in C.HEADS.values())
    head = nn.Linear(96, n_out)
    gen = torch.Generator().manual_seed(seed)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(x), (128,), generator=gen)
        feats = model(pixel_values=norm(C.augment(x[idx], gen), B.IMAGENET_MEAN, B.IMAGENET_STD)).pooler_output
        return head_loss(head(feats), y, idx)

    fit(list(model.parameters()) + list(head.parameters()), steps, 1e-3, step_fn, "dino")
    if os.path.isdir(out):
        shutil.rmtree(out)
    model.eval().save_pretrained(out, safe_serialization=True)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      image_mean=list(B.IMAGENET_MEAN), image_std=list(B.IMAGENET_STD),
                      do_convert_rgb=True).save_pretrained(out)


def train_vgg(seed: int, steps: int, out: str, x, y) -> None:
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    widths = (16, 32, 64, 96, 96)
    n_out = sum(len(v) for v in C.HEADS.values())
    net = B.VGG19(widths, num_classes=n_out, pool=1, hidden=128)
    gen = torch.Generator().manual_seed(seed)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(x), (128,), generator=gen)
        xi = net.normalize((C.augment(x[idx], gen) + 1) / 2)
        return head_loss(net(xi), y, idx)

    fit(list(net.parameters()), steps, 2e-3, step_fn, "vgg")
    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()},
              os.path.join(out, "model.safetensors"))
    meta = {"architecture": "vgg19", "widths": list(widths), "pool": 1, "hidden": 128, "num_classes": n_out,
            "mean": list(B.IMAGENET_MEAN), "std": list(B.IMAGENET_STD), "style_taps": list(B.STYLE_TAPS),
            "heads": {k: list(v) for k, v in C.HEADS.items()}}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["classifier", "clip", "dino", "vgg"], action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--out", default=DATA)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae", default=os.path.join(DATA, "tiny", "vae"),
                    help="fine-tune the classifier on this VAE's round trips ('' to skip)")
    ap.add_argument("--classifier-init", default="", help="start the classifier from these weights")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    which = args.only or ["classifier", "clip", "dino", "vgg"]
    s = args.steps_scale
    t_all = time.time()
    if "classifier" in which:
        t0 = time.time()
        if args.classifier_init:
            net = C.load_classifier(args.classifier_init)
        else:
            net = C.train_classifier(seed=args.seed, epochs=max(1, round(12 * s)), log_every=200)
        if args.vae:
            from diffusers import AutoencoderKL
            vae = AutoencoderKL.from_pretrained(args.vae).eval()
            net = C.finetune_on_decoded(net, vae, seed=args.seed, steps=max(10, int(600 * s)), log_every=100)
        C.save_classifier(net, os.path.join(args.out, "world", "classifier.safetensors"))
        print(f"classifier done in {time.time() - t0:.0f}s", flush=True)
    x = y = None
    if "dino" in which or "vgg" in which:
        x, y = any_set(args.seed, 20000)
    for name, fn, steps in (("clip", train_clip, 1200), ("dino", train_dino, 1000), ("vgg", train_vgg, 1000)):
        if name in which:
            t0 = time.time()
            dest = os.path.join(args.out, "backbones", name)
            if name == "clip":
                fn(args.seed, max(10, int(steps * s)), dest)
            else:
                fn(args.seed, max(10, int(steps * s)), dest, x, y)
            print(f"{name} done in {time.time() - t0:.0f}s", flush=True)
    print(f"all done in {time.time() - t_all:.0f}s", flush=True)


if __name__ == "__main__":
    main()
